'use strict'
// Shared by the tests: the package, fresh store directories, the cairn CLI.

const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { execFile } = require('node:child_process')

const cairn = require('..')

function tempDir (t) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-node-'))
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }))
  return dir
}

/** A store in a fresh directory, closed and removed after the test. */
async function openTemp (t, options) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-node-'))
  const store = await cairn.open(dir, options)
  t.after(async () => {
    await store.close()
    fs.rmSync(dir, { recursive: true, force: true })
  })
  return store
}

/** The cairn binary (CAIRN_BIN, set by the Rust test that runs these). */
function cairnBin () {
  const bin = process.env.CAIRN_BIN
  if (!bin) throw new Error('CAIRN_BIN is not set: run these tests with `cargo test -p cairn-node` (tests/node.rs), or set it to a cairn binary')
  return bin
}

/** Runs the cairn CLI; resolves to { code, stdout, stderr }. */
function cli (args, input) {
  return new Promise((resolve) => {
    const child = execFile(cairnBin(), args, { timeout: 30000 }, (error, stdout, stderr) => {
      resolve({ code: error ? (error.code ?? 1) : 0, stdout, stderr })
    })
    child.stdin.end(input ?? '')
  })
}

module.exports = { cairn, tempDir, openTemp, cli }
