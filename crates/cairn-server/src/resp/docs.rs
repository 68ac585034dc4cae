//! Argument specs for `COMMAND DOCS`, which redis-cli turns into the hints
//! it shows while a command is typed. Each command's syntax is written
//! once, as Redis's documentation writes it (`[optional]`, `a|b` for one
//! of, `...` for repeated, capitals for literal tokens), and turned into
//! Redis's argument maps when asked. The syntax strings are this file's
//! own constants, never client input.

use super::frame::Out;

/// The syntax of each command's arguments (after its name).
const SYNTAX: &[(&str, &str)] = &[
    ("ping", "[message]"),
    ("echo", "message"),
    ("hello", "[protover [AUTH username password] [SETNAME clientname]]"),
    ("auth", "[username] password"),
    ("select", "index"),
    ("acl", "WHOAMI"),
    ("quit", ""),
    ("reset", ""),
    ("client", "GETNAME|SETNAME|ID|INFO|LIST|SETINFO|NO-EVICT|NO-TOUCH|TRACKING|REPLY|HELP [arg ...]"),
    ("command", "[COUNT|LIST|INFO|DOCS [command-name ...]]"),
    ("info", "[section ...]"),
    ("dbsize", ""),
    ("monitor", ""),
    ("time", ""),
    ("config", "GET parameter [parameter ...]"),
    ("exists", "key [key ...]"),
    ("type", "key"),
    ("keys", "pattern"),
    ("scan", "cursor [MATCH pattern] [COUNT count] [TYPE type]"),
    ("del", "key [key ...]"),
    ("publish", "channel message"),
    ("subscribe", "channel [channel ...]"),
    ("psubscribe", "pattern [pattern ...]"),
    ("unsubscribe", "[channel [channel ...]]"),
    ("punsubscribe", "[pattern [pattern ...]]"),
    ("pubsub", "CHANNELS|NUMSUB|NUMPAT [arg ...]"),
    ("last-event-number", "stream"),
    ("stream-names", ""),
    ("xadd", "key [NOMKSTREAM] [MAXLEN|MINID [=|~] threshold [LIMIT count]] *|id field value [field value ...]"),
    ("xrange", "key start end [COUNT count]"),
    ("xrevrange", "key end start [COUNT count]"),
    ("xlen", "key"),
    ("xdel", "key id [id ...]"),
    ("xtrim", "key MAXLEN|MINID [=|~] threshold [LIMIT count]"),
    ("xread", "[COUNT count] [BLOCK milliseconds] STREAMS key [key ...] id [id ...]"),
    ("xgroup", "CREATE|SETID|DESTROY|CREATECONSUMER|DELCONSUMER key group [arg ...]"),
    ("xreadgroup", "GROUP group consumer [COUNT count] [BLOCK milliseconds] [NOACK] STREAMS key [key ...] id [id ...]"),
    ("xack", "key group id [id ...]"),
    ("xpending", "key group [[IDLE min-idle-time] start end count [consumer]]"),
    (
        "xclaim",
        "key group consumer min-idle-time id [id ...] [IDLE ms] [TIME unix-time-milliseconds] [RETRYCOUNT count] [FORCE] [JUSTID] [LASTID lastid]",
    ),
    ("xautoclaim", "key group consumer min-idle-time start [COUNT count] [JUSTID]"),
    ("multi", ""),
    ("exec", ""),
    ("discard", ""),
    ("watch", "key [key ...]"),
    ("unwatch", ""),
    ("xinfo", "STREAM|GROUPS|CONSUMERS key [group] [FULL [COUNT count]]"),
];

/// One argument of a command's syntax.
#[derive(Debug, PartialEq)]
enum Arg {
    /// A literal word (`NOMKSTREAM`, `=`).
    Token(String),
    /// A value the caller gives (`key`, `count`).
    Value(String),
    /// One of the alternatives.
    OneOf(Vec<Node>),
    /// A sequence written in one pair of brackets.
    Block(Vec<Node>),
}

#[derive(Debug, PartialEq)]
struct Node {
    arg: Arg,
    optional: bool,
    multiple: bool,
}

/// The parsed syntax of `name`, if the table has one.
fn syntax_of(name: &str) -> Option<Vec<Node>> {
    let (_, syntax) = SYNTAX.iter().find(|(command, _)| *command == name)?;
    let tokens = tokenize(syntax);
    let mut at = 0;
    Some(sequence(&tokens, &mut at))
}

fn tokenize(syntax: &str) -> Vec<&str> {
    let mut tokens = Vec::new();
    for word in syntax.split_whitespace() {
        let mut rest = word;
        while let Some(stripped) = rest.strip_prefix('[') {
            tokens.push("[");
            rest = stripped;
        }
        let closing = rest.len() - rest.trim_end_matches(']').len();
        let body = &rest[..rest.len() - closing];
        // `a|b` splits into its alternatives around `|`.
        for (index, part) in body.split('|').enumerate() {
            if index > 0 {
                tokens.push("|");
            }
            if !part.is_empty() {
                tokens.push(part);
            }
        }
        tokens.extend(std::iter::repeat_n("]", closing));
    }
    tokens
}

/// Parses elements until `]` or the end. The syntax strings are constants
/// of this file, nested at most three deep.
fn sequence(tokens: &[&str], at: &mut usize) -> Vec<Node> {
    let mut nodes = Vec::new();
    while let Some(&token) = tokens.get(*at) {
        match token {
            "]" => break,
            "..." => {
                *at += 1;
                // `x [x ...]`: the optional repeat makes `x` itself multiple.
                if let Some(last) = nodes.last_mut() {
                    let last: &mut Node = last;
                    last.multiple = true;
                }
            }
            "|" => {
                *at += 1;
                let alternative = element(tokens, at);
                match nodes.last_mut() {
                    Some(Node { arg: Arg::OneOf(alternatives), .. }) => alternatives.push(alternative),
                    Some(last) => {
                        let first = std::mem::replace(
                            last,
                            Node { arg: Arg::OneOf(Vec::new()), optional: false, multiple: false },
                        );
                        last.arg = Arg::OneOf(vec![first, alternative]);
                    }
                    None => nodes.push(alternative),
                }
            }
            _ => {
                let node = element(tokens, at);
                // `key [key ...]` is one multiple argument, `field value
                // [field value ...]` one multiple block.
                let repeated = match &node.arg {
                    Arg::Block(inner) if inner.last().is_some_and(|last| last.multiple) => inner.as_slice(),
                    _ if node.optional && node.multiple => std::slice::from_ref(&node),
                    _ => &[],
                };
                let n = repeated.len();
                if n > 0
                    && nodes.len() >= n
                    && nodes[nodes.len() - n..].iter().zip(repeated).all(|(a, b)| same(&a.arg, &b.arg))
                {
                    if n == 1 {
                        nodes.last_mut().expect("checked").multiple = true;
                    } else {
                        let group = nodes.split_off(nodes.len() - n);
                        nodes.push(Node { arg: Arg::Block(group), optional: false, multiple: true });
                    }
                    continue;
                }
                nodes.push(node);
            }
        }
    }
    nodes
}

fn same(a: &Arg, b: &Arg) -> bool {
    match (a, b) {
        (Arg::Value(a), Arg::Value(b)) | (Arg::Token(a), Arg::Token(b)) => a == b,
        _ => false,
    }
}

fn element(tokens: &[&str], at: &mut usize) -> Node {
    let token = tokens[*at];
    *at += 1;
    if token == "[" {
        let mut inner = sequence(tokens, at);
        *at += 1; // the `]`
        if inner.len() == 1 {
            let mut node = inner.pop().expect("one");
            node.optional = true;
            return node;
        }
        return Node { arg: Arg::Block(inner), optional: true, multiple: false };
    }
    let is_token = token.chars().all(|c| c.is_ascii_uppercase() || c == '-' || c == '=' || c == '~' || c == '*');
    let arg = if is_token { Arg::Token(token.to_owned()) } else { Arg::Value(token.to_owned()) };
    Node { arg, optional: false, multiple: false }
}

/// Writes the `arguments` of `name`'s docs; false when it has none.
pub(crate) fn write_arguments(out: &mut Out, name: &str) -> bool {
    let Some(nodes) = syntax_of(name) else { return false };
    if nodes.is_empty() {
        return false;
    }
    write_nodes(out, &nodes);
    true
}

fn write_nodes(out: &mut Out, nodes: &[Node]) {
    out.array(nodes.len());
    for node in nodes {
        write_node(out, node);
    }
}

fn write_node(out: &mut Out, node: &Node) {
    let flags: Vec<&str> = [("optional", node.optional), ("multiple", node.multiple)]
        .iter()
        .filter(|(_, on)| *on)
        .map(|(f, _)| *f)
        .collect();
    let (name, kind, token, children) = match &node.arg {
        Arg::Token(word) => (word.to_lowercase(), "pure-token", Some(word.as_str()), None),
        Arg::Value(word) => (word.clone(), value_type(word), None, None),
        Arg::OneOf(children) => ("choice".to_owned(), "oneof", None, Some(children)),
        Arg::Block(children) => ("block".to_owned(), "block", None, Some(children)),
    };
    out.map(2 + usize::from(token.is_some()) + usize::from(!flags.is_empty()) + usize::from(children.is_some()));
    out.bulk(b"name");
    out.bulk(name.as_bytes());
    out.bulk(b"type");
    out.bulk(kind.as_bytes());
    if let Some(token) = token {
        out.bulk(b"token");
        out.bulk(token.as_bytes());
    }
    if !flags.is_empty() {
        out.bulk(b"flags");
        out.array(flags.len());
        for flag in flags {
            out.simple(flag);
        }
    }
    if let Some(children) = children {
        out.bulk(b"arguments");
        write_nodes(out, children);
    }
}

fn value_type(name: &str) -> &'static str {
    match name {
        "key" | "stream" => "key",
        "pattern" => "pattern",
        "count" | "milliseconds" | "min-idle-time" | "ms" | "index" | "protover" | "cursor" => "integer",
        "unix-time-milliseconds" => "unix-time",
        _ => "string",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_has_a_syntax_and_each_parses_to_its_end() {
        for spec in super::super::table::SPECS {
            let (_, syntax) = SYNTAX
                .iter()
                .find(|(name, _)| *name == spec.name)
                .unwrap_or_else(|| panic!("{} has no syntax", spec.name));
            let tokens = tokenize(syntax);
            let mut at = 0;
            sequence(&tokens, &mut at);
            assert_eq!(at, tokens.len(), "{}: stopped early in {syntax:?}", spec.name);
        }
    }

    #[test]
    fn brackets_alternatives_and_repeats_become_redis_argument_shapes() {
        let nodes = syntax_of("xadd").expect("xadd");
        assert_eq!(nodes[0], Node { arg: Arg::Value("key".into()), optional: false, multiple: false });
        assert_eq!(nodes[1], Node { arg: Arg::Token("NOMKSTREAM".into()), optional: true, multiple: false });
        let Arg::Block(trim) = &nodes[2].arg else { panic!("{:?}", nodes[2]) };
        assert!(nodes[2].optional && matches!(&trim[0].arg, Arg::OneOf(choices) if choices.len() == 2));
        assert!(matches!(&nodes[3].arg, Arg::OneOf(choices) if choices.len() == 2));
        let Arg::Block(pair) = &nodes[4].arg else { panic!("{:?}", nodes[4]) };
        assert!(nodes[4].multiple && pair.len() == 2, "{:?}", nodes[4]);
        let keys = syntax_of("exists").expect("exists");
        assert_eq!(keys, vec![Node { arg: Arg::Value("key".into()), optional: false, multiple: true }]);
    }
}
