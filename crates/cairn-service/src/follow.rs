//! Follows: history then live events of a pattern the caller may read,
//! with payloads when asked, at most `limit` events, in chunks of what is
//! ready. Every front end's "follow a subscription" loop is this one: HTTP
//! streams (NDJSON and SSE), MeiliES `subscribe`, blocking `XREAD`, the
//! CLI's `cat --follow`.
//!
//! A follow ends cleanly: with `ShuttingDown` when the service shuts down
//! or storage closes, and with `Unauthenticated` as soon as the caller's
//! credential is revoked (it watches the users' change signal, so a revoked
//! token stops a stream at once, not at its next event).

use std::sync::Arc;
use std::time::Duration;

use cairn_store::limits::READ_CHUNK_CONTENT_BYTES;
use cairn_store::{Delivery, Event, Pattern, Query, SubscribeOptions, Subscription, Topic};
use tokio::sync::watch;

use crate::error::{Result, ServiceError};
use crate::principal::Principal;
use crate::service::Service;

/// How a follow behaves beyond its query.
#[derive(Clone, Copy, Debug, Default)]
pub struct FollowOptions {
    /// Deliver [`Delivered::Threshold`] once history is over.
    pub threshold: bool,
    /// Deliver [`Delivered::Pulse`] after this long without events.
    pub pulse: Option<Duration>,
    /// Load each event's payload (verified).
    pub content: bool,
    /// At most this many events, then the follow is over.
    pub limit: Option<u64>,
}

/// What a follow delivers.
#[derive(Clone, Debug)]
pub enum Delivered {
    /// An event, and its payload if asked for.
    Event(Arc<Event>, Option<Vec<u8>>),
    /// History is over; live events follow.
    Threshold,
    /// Nothing happened for the pulse interval.
    Pulse,
}

/// A running follow (see the module docs).
pub struct Follow {
    service: Service,
    who: Principal,
    subscription: Subscription,
    /// Only events matching one of these (empty: every topic of the
    /// subscription's pattern).
    only: Vec<Pattern>,
    content: bool,
    remaining: u64,
    sessions: watch::Receiver<u64>,
    stopping: watch::Receiver<bool>,
}

impl Service {
    /// History matching `query` (from `after`, `from_seq`, `last`, or the
    /// beginning), then live events; `who` must be allowed to read the
    /// pattern. A `limit` in the query is the follow's limit.
    pub async fn follow(&self, who: &Principal, query: Query, options: FollowOptions) -> Result<Follow> {
        self.admit(who)?;
        who.check_read(&query.pattern)?;
        let limit = options.limit.or(query.limit);
        let query = Query { limit: None, ..query };
        let subscribe = SubscribeOptions { threshold: options.threshold, pulse: options.pulse };
        let subscription = Subscription::start(self.inner.storage.clone(), &query, subscribe).await?;
        Ok(self.follow_with(who, subscription, FollowOptions { limit, ..options }))
    }

    /// Live events of `pattern` from now on (taken before a blocking
    /// read's first look, so nothing committed in between is missed).
    pub fn follow_live(&self, who: &Principal, pattern: Pattern, options: FollowOptions) -> Result<Follow> {
        self.admit(who)?;
        who.check_read(&pattern)?;
        let subscribe = SubscribeOptions { threshold: false, pulse: options.pulse };
        let subscription = Subscription::live(self.inner.storage.clone(), pattern, subscribe);
        Ok(self.follow_with(who, subscription, options))
    }

    /// Live events of any of `topics` from now on; each must be readable.
    pub fn follow_topics(&self, who: &Principal, topics: &[Topic], options: FollowOptions) -> Result<Follow> {
        self.admit(who)?;
        for topic in topics {
            who.check_read(&Pattern::Exact(topic.clone()))?;
        }
        let pattern = match topics {
            [topic] => Pattern::Exact(topic.clone()),
            _ => Pattern::all(),
        };
        let subscribe = SubscribeOptions { threshold: false, pulse: options.pulse };
        let subscription = Subscription::live(self.inner.storage.clone(), pattern, subscribe);
        let mut follow = self.follow_with(who, subscription, options);
        if topics.len() > 1 {
            follow.only = topics.iter().cloned().map(Pattern::Exact).collect();
        }
        Ok(follow)
    }

    /// History after `after` (or from the beginning), then live events,
    /// of the topics any of `patterns` matches; each must be readable.
    pub async fn follow_patterns(
        &self,
        who: &Principal,
        patterns: &[Pattern],
        after: Option<cairn_store::EventId>,
        options: FollowOptions,
    ) -> Result<Follow> {
        self.admit(who)?;
        for pattern in patterns {
            who.check_read(pattern)?;
        }
        let pattern = match patterns {
            [pattern] => pattern.clone(),
            _ => Pattern::all(),
        };
        let query = Query { after, ..Query::new(pattern) };
        let subscribe = SubscribeOptions { threshold: options.threshold, pulse: options.pulse };
        let subscription = Subscription::start(self.inner.storage.clone(), &query, subscribe).await?;
        let mut follow = self.follow_with(who, subscription, options);
        if patterns.len() > 1 {
            follow.only = patterns.to_vec();
        }
        Ok(follow)
    }

    fn follow_with(&self, who: &Principal, subscription: Subscription, options: FollowOptions) -> Follow {
        Follow {
            service: self.clone(),
            who: who.clone(),
            subscription,
            only: Vec::new(),
            content: options.content,
            remaining: options.limit.unwrap_or(u64::MAX),
            sessions: self.session_changes(),
            stopping: self.stopping(),
        }
    }
}

impl Follow {
    /// Waits for the next delivery and returns it with whatever else is
    /// ready now, at most `max` and no more once the payloads loaded reach
    /// [`READ_CHUNK_CONTENT_BYTES`]; empty once the limit is reached.
    /// Cancel-safe while it waits for events (dropping it then loses
    /// nothing); dropped while loading payloads, it loses what it took.
    pub async fn next(&mut self, max: usize) -> Result<Vec<Delivered>> {
        let mut out = Vec::new();
        while out.is_empty() && self.remaining > 0 {
            self.service.admit(&self.who)?;
            let first = loop {
                tokio::select! {
                    biased;
                    _ = self.stopping.wait_for(|stopping| *stopping) => return Err(ServiceError::ShuttingDown),
                    changed = self.sessions.changed() => {
                        if changed.is_err() {
                            return Err(ServiceError::ShuttingDown);
                        }
                        self.service.admit(&self.who)?;
                    }
                    delivery = self.subscription.next() => break delivery?,
                }
            };
            let mut bytes = self.push(&mut out, first).await?;
            while out.len() < max.max(1) && self.remaining > 0 && bytes < READ_CHUNK_CONTENT_BYTES {
                match self.subscription.ready() {
                    Some(delivery) => bytes += self.push(&mut out, delivery?).await?,
                    None => break,
                }
            }
        }
        Ok(out)
    }

    /// Adds a delivery to `out`; returns the bytes of payload it loaded.
    async fn push(&mut self, out: &mut Vec<Delivered>, delivery: Delivery) -> Result<usize> {
        let mut bytes = 0;
        out.push(match delivery {
            Delivery::Event(event)
                if !self.only.is_empty() && !self.only.iter().any(|only| only.matches(event.topic.as_str())) =>
            {
                return Ok(0);
            }
            Delivery::Event(event) => {
                self.remaining -= 1;
                let content = if self.content { self.service.storage().content(&event).await? } else { None };
                bytes = content.as_ref().map_or(0, Vec::len);
                Delivered::Event(event, content)
            }
            Delivery::Threshold => Delivered::Threshold,
            Delivery::Pulse => Delivered::Pulse,
        });
        Ok(bytes)
    }

    /// Whether the limit is reached.
    pub fn is_done(&self) -> bool {
        self.remaining == 0
    }

    /// The id of the last event looked at.
    pub fn cursor(&self) -> cairn_store::EventId {
        self.subscription.cursor()
    }
}
