//! MeiliES's commands, byte for byte as MeiliES speaks them (seed 001):
//! `publish <stream> <event-name> <data>` → `+OK`; `subscribe <spec>…` →
//! `*2 +subscribed +<stream>` per spec, then pushes
//! `*5 +event +<stream> :<number> +<event-name> $<data>`;
//! `last-event-number <stream>`; `stream-names`. A stream is a topic, the
//! event number its seq, the event name its type, the data its payload.
//! MeiliES views leave out the store's own `cairn.*` topics.

use bytes::{BufMut as _, Bytes, BytesMut};
use cairn_service::{Batch, Delivered, Event, Expect, FollowOptions, NewEvent, Pattern, Query, ServiceError, Topic};
use futures_util::future::BoxFuture;

use super::topic;
use crate::resp::conn::{Awaiting, Conn};
use crate::resp::error::{CmdResult, Fail, err};

/// Deliveries a subscription takes per step.
const SUBSCRIPTION_CHUNK_EVENTS: usize = 64;
/// Subscriptions one connection may hold at once (each is a follow of its own).
const SUBSCRIPTIONS_PER_CONNECTION_MAX: usize = 256;

/// What one `subscribe` spec asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Spec {
    /// `None` for `$all`.
    topic: Option<Topic>,
    /// History from this event number; `None` is live only.
    from: Option<u64>,
    /// Stop before this event number.
    to: Option<u64>,
}

impl Spec {
    /// Parses `name`, `name:from`, `name:from:to` (and the same for `$all`).
    pub(crate) fn parse(text: &[u8]) -> Result<Spec, Fail> {
        let invalid = |why: &str| err(format!("invalid stream spec '{}': {why}", String::from_utf8_lossy(text)));
        let text = std::str::from_utf8(text).map_err(|_| invalid("not UTF-8"))?;
        let mut parts = text.split(':');
        let name = parts.next().unwrap_or_default();
        let number = |part: Option<&str>| -> Result<Option<u64>, Fail> {
            match part {
                None => Ok(None),
                Some(part) if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) => {
                    part.parse().map(Some).map_err(|_| invalid("event number out of range"))
                }
                Some(_) => Err(invalid("event numbers are decimal digits")),
            }
        };
        let from = number(parts.next())?;
        let to = number(parts.next())?;
        if parts.next().is_some() {
            return Err(invalid("expected name[:from[:to]]"));
        }
        if let (Some(from), Some(to)) = (from, to)
            && from >= to
        {
            return Err(invalid("from must be less than to (to is exclusive)"));
        }
        let topic = match name {
            "$all" => None,
            name => Some(Topic::new(name).map_err(|error| invalid(&error.to_string()))?),
        };
        Ok(Spec { topic, from, to })
    }

    fn name(&self) -> &str {
        self.topic.as_ref().map_or("$all", Topic::as_str)
    }

    fn pattern(&self) -> Pattern {
        self.topic.clone().map_or_else(Pattern::all, Pattern::Exact)
    }
}

/// `publish <stream> <event-name> <data>`, submitted without waiting.
pub(crate) fn submit_publish<'a>(conn: &'a mut Conn, args: &'a [Bytes]) -> Option<BoxFuture<'a, Awaiting>> {
    if args.len() != 4 {
        // Redis's PUBLISH, or a wrong number of arguments.
        return None;
    }
    Some(Box::pin(async move {
        let submitted = async {
            let event = publish_event(args)?;
            let who = conn.who()?;
            Ok::<_, Fail>(Awaiting::Published(conn.app.service.submit(who, Batch::single(event, Expect::Any)).await?))
        };
        submitted.await.unwrap_or_else(Awaiting::Failed)
    }))
}

/// The event of `publish <stream> <event-name> <data>`.
pub(crate) fn publish_event(args: &[Bytes]) -> Result<NewEvent, Fail> {
    let topic = topic(&args[1])?;
    let kind = std::str::from_utf8(&args[2]).map_err(|_| err("invalid event name: not UTF-8"))?;
    let mut event = NewEvent::new(topic, args[3].to_vec());
    if !kind.is_empty() {
        event.kind = Some(kind.to_owned());
    }
    Ok(event)
}

/// `publish` when not submitted on its own (not reached for well-formed
/// commands: they are all submitted).
pub(crate) async fn publish(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    match args.len() {
        3 => return super::pubsub::publish(conn, args).await,
        4 => {}
        _ => return Err(crate::resp::error::arity("publish")),
    }
    let awaiting = submit_publish(conn, args).expect("publish is always submitted").await;
    match awaiting {
        Awaiting::Published(appending) => {
            appending.await?;
            conn.out.simple("OK");
            Ok(())
        }
        Awaiting::Failed(fail) => Err(fail),
        Awaiting::Entry(_) => unreachable!("publish submits a publish"),
    }
}

pub(crate) async fn subscribe(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    let specs = args[1..].iter().map(|spec| Spec::parse(spec)).collect::<Result<Vec<_>, _>>()?;
    let who = conn.who()?.clone();
    conn.subscriptions.retain(|task| !task.is_finished());
    if conn.subscriptions.len() + specs.len() > SUBSCRIPTIONS_PER_CONNECTION_MAX {
        return Err(err(format!(
            "a connection holds at most {SUBSCRIPTIONS_PER_CONNECTION_MAX} subscriptions; it has {}",
            conn.subscriptions.len()
        )));
    }
    for spec in &specs {
        who.check_read(&spec.pattern())?;
    }
    let service = &conn.app.service;
    for spec in specs {
        let options = FollowOptions { content: true, ..FollowOptions::default() };
        let mut follow = match spec.from {
            None => service.follow_live(&who, spec.pattern(), options)?,
            Some(from) => {
                let from_seq = spec.topic.is_some().then_some(from);
                service.follow(&who, Query { from_seq, ..Query::new(spec.pattern()) }, options).await?
            }
        };
        conn.out.array(2);
        conn.out.simple("subscribed");
        conn.out.simple(spec.name());
        let (pushes, proto) = (conn.pushes.clone(), conn.out.proto);
        let task = tokio::spawn(async move {
            loop {
                let deliveries = match follow.next(SUBSCRIPTION_CHUNK_EVENTS).await {
                    Ok(deliveries) => deliveries,
                    Err(ServiceError::ShuttingDown) => return,
                    Err(error) => {
                        tracing::info!("a subscription ended: {error}");
                        return;
                    }
                };
                for delivery in deliveries {
                    let Delivered::Event(event, content) = delivery else { continue };
                    if spec.topic.is_none() && event.topic.is_system() {
                        continue;
                    }
                    if spec.from.is_some_and(|from| event.seq < from) {
                        continue;
                    }
                    if spec.to.is_some_and(|to| event.seq >= to) {
                        if spec.topic.is_some() {
                            return;
                        }
                        continue;
                    }
                    let frame = push_frame(&event, content.as_deref().unwrap_or_default(), proto);
                    if !pushes.send(frame).await {
                        return;
                    }
                    if spec.topic.is_some() && spec.to.is_some_and(|to| event.seq + 1 >= to) {
                        return;
                    }
                }
            }
        });
        conn.subscriptions.push(task.abort_handle());
    }
    Ok(())
}

/// `*5 +event +<stream> :<number> +<event-name> $<data>`.
fn push_frame(event: &Event, data: &[u8], proto: u8) -> Bytes {
    let mut frame = BytesMut::with_capacity(64 + event.topic.as_str().len() + data.len());
    frame.put_slice(if proto == 3 { b">5\r\n+event\r\n+" } else { b"*5\r\n+event\r\n+" });
    frame.put_slice(event.topic.as_str().as_bytes());
    frame.put_slice(b"\r\n:");
    frame.put_slice(itoa::Buffer::new().format(event.seq).as_bytes());
    frame.put_slice(b"\r\n+");
    // Types are validated text; a line break would break the frame.
    frame.put_slice(event.kind.as_deref().unwrap_or("").replace(['\r', '\n'], " ").as_bytes());
    frame.put_slice(b"\r\n$");
    frame.put_slice(itoa::Buffer::new().format(data.len()).as_bytes());
    frame.put_slice(b"\r\n");
    frame.put_slice(data);
    frame.put_slice(b"\r\n");
    frame.freeze()
}

pub(crate) async fn last_event_number(conn: &mut Conn, args: &[Bytes]) -> CmdResult {
    let topic = topic(&args[1])?;
    let head = conn.app.service.head(conn.who()?, &topic).await?;
    conn.out.array(3);
    conn.out.simple("last-event-number");
    conn.out.simple(topic.as_str());
    match head {
        Some(head) => conn.out.int(head.last_seq as i64),
        None => conn.out.buf.put_slice(b"$-1\r\n"),
    }
    Ok(())
}

pub(crate) async fn stream_names(conn: &mut Conn, _args: &[Bytes]) -> CmdResult {
    let topics = conn.app.service.topics(conn.who()?).await?;
    let names: Vec<Topic> = topics.into_iter().map(|info| info.topic).filter(|topic| !topic.is_system()).collect();
    conn.out.array(names.len() + 1);
    conn.out.simple("stream-names");
    for name in names {
        conn.out.simple(name.as_str());
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;

    use super::Spec;

    proptest! {
        /// Any bytes parse or fail cleanly.
        #[test]
        fn any_bytes_parse_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Spec::parse(&bytes);
        }

        /// Well-formed specs parse to what they say.
        #[test]
        fn well_formed_specs_parse_back(name in "[a-z][a-z0-9._-]{0,20}", from in proptest::option::of(0u64..1000), span in 1u64..1000) {
            let text = match from {
                None => name.clone(),
                Some(from) => format!("{name}:{from}:{}", from + span),
            };
            prop_assume!(!name.ends_with('.') && !name.contains(".."));
            let spec = Spec::parse(text.as_bytes()).unwrap();
            prop_assert_eq!(spec.name(), name.as_str());
            prop_assert_eq!(spec.from, from);
            prop_assert_eq!(spec.to, from.map(|from| from + span));
        }
    }

    #[test]
    fn the_fuzz_corpus_replays() {
        let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/meilies_spec");
        let mut n = 0;
        for entry in std::fs::read_dir(corpus).unwrap() {
            crate::fuzzing::meilies_spec(&std::fs::read(entry.unwrap().path()).unwrap());
            n += 1;
        }
        assert!(n >= 3, "the committed corpus is there");
    }

    #[test]
    fn specs_parse_like_meilies_and_refuse_the_malformed() {
        let spec = Spec::parse(b"s:3:5").unwrap();
        assert_eq!((spec.name(), spec.from, spec.to), ("s", Some(3), Some(5)));
        let spec = Spec::parse(b"$all:2").unwrap();
        assert_eq!((spec.name(), spec.from, spec.to), ("$all", Some(2), None));
        assert_eq!(Spec::parse(b"s").unwrap().from, None);
        for bad in [&b"a:"[..], b"a::1", b"a:x", b"a:5:2", b"a:5:5", b"a:1:2:3", b":1", b"a*b", b"a:-1"] {
            assert!(Spec::parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
