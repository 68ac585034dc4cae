'use strict'
// Builds the native addon with cargo and puts it where index.js loads it
// (`npm install` runs this). Needs a Rust toolchain (cargo); downloads no
// prebuilt binary. `node build.js [--debug] [--out FILE]`.

const { execFileSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')

const args = process.argv.slice(2)
const debug = args.includes('--debug')
const outAt = args.indexOf('--out')
const out = outAt >= 0 ? path.resolve(args[outAt + 1]) : path.join(__dirname, 'cairn.node')
const cargo = process.env.CARGO || 'cargo'

const started = Date.now()
const profile = debug ? [] : ['--release']
execFileSync(cargo, ['build', '-p', 'cairn-node', ...profile], { cwd: __dirname, stdio: 'inherit' })
const metadata = JSON.parse(execFileSync(cargo, ['metadata', '--format-version', '1', '--no-deps'], { cwd: __dirname, encoding: 'utf8', maxBuffer: 64 << 20 }))
const library = { linux: 'libcairn_node.so', darwin: 'libcairn_node.dylib', win32: 'cairn_node.dll' }[process.platform] || 'libcairn_node.so'
const built = path.join(metadata.target_directory, debug ? 'debug' : 'release', library)
// Copy then rename: a process that has the old addon loaded keeps its file.
fs.copyFileSync(built, `${out}.tmp`)
fs.renameSync(`${out}.tmp`, out)
console.log(`cairn-store: built ${path.relative(process.cwd(), out) || out} (${debug ? 'debug' : 'release'}) in ${((Date.now() - started) / 1000).toFixed(1)} s`)
