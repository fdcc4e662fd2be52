//! The end-of-run check of read markers and unread counts (`--user-stream`), once
//! sending has stopped and the acknowledgements in flight are in, with every socket
//! still open. For each user and each conversation it is in (a pair):
//!
//! 1. its conversation list over REST (`GET /api/chat/conversations`, paged by
//!    `X-Next-Cursor`) against what its socket saw: `unread_count` must be the messages
//!    of others it saw (the marker is still at 0), counted up to 100. Only a pair
//!    that has seen the whole stream is compared: its last position seen equal to
//!    `last_seq`, and nothing skipped (see [`crate::ws::SeatView`]); any other is
//!    "not settled", never a mismatch;
//! 2. a `read` at its last position seen, on its socket: the server's `read` event must
//!    name that position;
//! 3. the list again: `last_read_seq` must be that position and `unread_count` 0,
//!    unless the conversation moved on meanwhile (not settled).
//!
//! It reads the sockets' views and asks them to send `read`; it never counts or judges
//! anything of the chat itself, and the verdict on what it found is the report's.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout, Instant};

use crate::console::{say, thousands};
use crate::state::{lock, Account, Run};
use crate::verify::get_retried;
use crate::ws::{Command, SeatView};

/// Users checked at once.
const PARALLEL: usize = 16;
/// The server counts unread messages up to this many.
const UNREAD_CAP: u64 = 100;
/// Conversations per page of the list.
const PAGE: usize = 100;
/// Longest a socket takes to answer, and the server to echo a `read`.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a socket may take to receive what the list says was committed.
const CATCH_UP: Duration = Duration::from_secs(2);
/// Mismatches and failures described in the report, at most.
const EXAMPLES: usize = 10;

/// One comparison, over every pair.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Comparison {
    /// Pairs compared.
    pub checked: u64,
    /// Of those, the ones the server got wrong (must be 0).
    pub mismatches: u64,
    /// Pairs not compared: the user had not seen the whole stream, or it moved on.
    pub not_settled: u64,
}

/// What the check found.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct MarkerCheck {
    /// (user, conversation) pairs looked at.
    pub pairs: u64,
    /// Each pair's `unread_count` against the messages of others its user saw.
    pub unread: Comparison,
    /// Each pair's marker moved to the last position seen: the `read` echo on the
    /// stream, then `last_read_seq` and an `unread_count` of 0 over REST.
    pub markers: Comparison,
    /// Pairs that could not be checked at all: the list could not be read, the
    /// conversation was not in it, or the socket did not answer (must be 0).
    pub failed: u64,
    /// The first few mismatches and failures, described.
    pub examples: Vec<String>,
}

impl MarkerCheck {
    fn add(&mut self, other: MarkerCheck) {
        self.pairs += other.pairs;
        for (sum, part) in [
            (&mut self.unread, other.unread),
            (&mut self.markers, other.markers),
        ] {
            sum.checked += part.checked;
            sum.mismatches += part.mismatches;
            sum.not_settled += part.not_settled;
        }
        self.failed += other.failed;
        let room = EXAMPLES.saturating_sub(self.examples.len());
        self.examples.extend(other.examples.into_iter().take(room));
    }

    fn example(&mut self, text: String) {
        if self.examples.len() < EXAMPLES {
            self.examples.push(text);
        }
    }
}

/// Checks every user's markers and unread counts; see the module's documentation.
pub async fn check(run: &Run) -> MarkerCheck {
    let users = run.plan.users();
    say(&format!(
        "checking the unread counts and read markers of {} users",
        thousands(users as u64)
    ));
    let mut total = MarkerCheck::default();
    let mut checks = stream::iter(0..users)
        .map(|user| check_user(run, user))
        .buffer_unordered(PARALLEL);
    while let Some(one) = checks.next().await {
        total.add(one);
    }
    total
}

/// A pair: which socket carries it, the seat there, and what the seat saw.
struct Pair {
    socket: usize,
    seat: usize,
    view: SeatView,
}

/// One conversation as the list gives it.
#[derive(Deserialize)]
struct Item {
    id: String,
    last_seq: u64,
    last_read_seq: u64,
    unread_count: u64,
}

async fn check_user(run: &Run, user: usize) -> MarkerCheck {
    let mut out = MarkerCheck::default();
    // A user that never logged in or connected failed its setup, which the report
    // already counts.
    let Some(account) = run.accounts[user].get() else {
        return out;
    };
    let sockets: Vec<Option<mpsc::Sender<Command>>> = run
        .sockets_of(user)
        .iter()
        .map(|slot| lock(slot).as_ref().map(|h| h.commands.clone()))
        .collect();
    let name = run.username(user);
    let wanted: HashSet<String> = run
        .plan
        .seats(user)
        .iter()
        .filter_map(|seat| Some(run.convs[seat.conversation].info.get()?.id.clone()))
        .collect();
    out.pairs = wanted.len() as u64;

    let before = match list(run, user, account, &wanted).await {
        Ok(list) => list,
        Err(e) => {
            out.failed = out.pairs;
            out.example(format!("{name}: conversation list not read: {e}"));
            return out;
        }
    };
    let pairs = settled_views(&sockets, &before).await;
    let seen: HashSet<&str> = pairs.iter().map(|p| p.view.conv_id.as_str()).collect();
    let unanswered = wanted
        .iter()
        .filter(|id| !seen.contains(id.as_str()))
        .count();
    if unanswered > 0 {
        out.failed += unanswered as u64;
        out.example(format!(
            "{name}: {unanswered} conversations without a socket that answered"
        ));
    }

    // 1. The unread counts, against what the user saw.
    for pair in &pairs {
        let v = &pair.view;
        let Some(item) = before.get(&v.conv_id) else {
            out.failed += 1;
            out.example(format!(
                "{name}: conversation #{} not in its conversation list",
                v.conv
            ));
            continue;
        };
        if !v.whole || v.position != Some(item.last_seq) {
            out.unread.not_settled += 1;
            continue;
        }
        let expected = v.others_seen.min(UNREAD_CAP);
        out.unread.checked += 1;
        if item.unread_count != expected {
            out.unread.mismatches += 1;
            out.example(format!(
                "{name} in conversation #{}: unread_count {}, but it saw {} messages of others up to position {}",
                v.conv, item.unread_count, v.others_seen, item.last_seq
            ));
        }
    }

    // 2. A read at the last position seen, echoed on the stream.
    let mut echoes = Vec::new();
    let gap = read_gap(run);
    for pair in pairs
        .iter()
        .filter(|p| before.contains_key(&p.view.conv_id))
    {
        let Some(seq) = pair.view.position else {
            out.markers.not_settled += 1;
            continue;
        };
        let (tx, rx) = oneshot::channel();
        let command = Command::Read {
            seat: pair.seat,
            seq,
            echoed: tx,
        };
        if let Some(commands) = &sockets[pair.socket] {
            let _ = timeout(ANSWER_TIMEOUT, commands.send(command)).await;
        }
        echoes.push((pair, seq, rx));
        if let Some(gap) = gap {
            tokio::time::sleep(gap).await;
        }
    }
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    let mut marked = Vec::new();
    for (pair, seq, rx) in echoes {
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(echoed)) if echoed == seq => marked.push((pair, seq)),
            answer => {
                out.markers.mismatches += 1;
                let what = match answer {
                    Ok(Ok(echoed)) => format!("the read echo named {echoed}"),
                    Ok(Err(_)) => "the socket ended before the read echo".to_string(),
                    Err(_) => "no read echo in time".to_string(),
                };
                out.example(format!(
                    "{name} in conversation #{}: read at {seq}, but {what}",
                    pair.view.conv
                ));
            }
        }
    }

    // 3. The marker and the unread count over REST.
    if marked.is_empty() {
        return out;
    }
    let after = match list(run, user, account, &wanted).await {
        Ok(list) => list,
        Err(e) => {
            out.failed += marked.len() as u64;
            out.example(format!("{name}: conversation list not read again: {e}"));
            return out;
        }
    };
    for (pair, seq) in marked {
        let Some(item) = after.get(&pair.view.conv_id) else {
            out.failed += 1;
            continue;
        };
        if item.last_seq != seq {
            out.markers.not_settled += 1;
            continue;
        }
        out.markers.checked += 1;
        if item.last_read_seq != seq || item.unread_count != 0 {
            out.markers.mismatches += 1;
            out.example(format!(
                "{name} in conversation #{}: read at {seq}, then last_read_seq {} and unread_count {}",
                pair.view.conv, item.last_read_seq, item.unread_count
            ));
        }
    }
    out
}

/// The seats' views once they have caught up with `list` (or after [`CATCH_UP`]):
/// what was committed before the list was read may still be on its way.
async fn settled_views(
    sockets: &[Option<mpsc::Sender<Command>>],
    list: &HashMap<String, Item>,
) -> Vec<Pair> {
    let until = Instant::now() + CATCH_UP;
    loop {
        let pairs = views(sockets).await;
        let behind = pairs.iter().any(|p| {
            list.get(&p.view.conv_id)
                .is_some_and(|item| p.view.position.is_some_and(|at| at < item.last_seq))
        });
        if !behind || Instant::now() >= until {
            return pairs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every seat of every socket of the user, as it is now.
async fn views(sockets: &[Option<mpsc::Sender<Command>>]) -> Vec<Pair> {
    let mut pairs = Vec::new();
    for (socket, commands) in sockets.iter().enumerate() {
        let Some(commands) = commands else { continue };
        let (tx, rx) = oneshot::channel();
        if timeout(ANSWER_TIMEOUT, commands.send(Command::View(tx)))
            .await
            .is_err()
        {
            continue;
        }
        let Ok(Ok(views)) = timeout(ANSWER_TIMEOUT, rx).await else {
            continue;
        };
        pairs.extend(
            views
                .into_iter()
                .enumerate()
                .map(|(seat, view)| Pair { socket, seat, view }),
        );
    }
    pairs
}

/// The pause between one user's `read` events when the server's per-user rate limit
/// applies (a remote server, or the real limit given for hostile clients): half of it.
fn read_gap(run: &Run) -> Option<Duration> {
    let config = &run.config;
    let limited = config.goose.host.is_some() || config.scenario.hostile > 0;
    (limited && config.server_rate_limit > 0.0)
        .then(|| Duration::from_secs_f64(2.0 / config.server_rate_limit))
}

/// The conversations of `wanted` in the user's list, paging until all are found or
/// the list ends.
async fn list(
    run: &Run,
    user: usize,
    account: &Account,
    wanted: &HashSet<String>,
) -> Result<HashMap<String, Item>, String> {
    let base = &run.node_of(user).base_url;
    let mut found = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/api/chat/conversations?limit={PAGE}");
        if let Some(c) = &cursor {
            url.push_str("&cursor=");
            url.push_str(c);
        }
        let (items, next) = page(run, &url, &account.token).await?;
        for item in items {
            if wanted.contains(&item.id) {
                found.insert(item.id.clone(), item);
            }
        }
        match next {
            Some(next) if found.len() < wanted.len() => cursor = Some(next),
            _ => return Ok(found),
        }
    }
}

/// One page of the list and its `X-Next-Cursor`, retried on a transport error or a
/// 5xx.
async fn page(run: &Run, url: &str, token: &str) -> Result<(Vec<Item>, Option<String>), String> {
    let response = get_retried(&run.clients.http, url, token, "the list").await?;
    let next = response
        .headers()
        .get("x-next-cursor")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let items = response
        .json::<Vec<Item>>()
        .await
        .map_err(|e| format!("unexpected list body: {e}"))?;
    Ok((items, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_add_up_and_keep_a_few_examples() {
        let one = |n: u64| MarkerCheck {
            pairs: n,
            unread: Comparison {
                checked: n,
                mismatches: 1,
                not_settled: 0,
            },
            markers: Comparison {
                checked: n,
                mismatches: 0,
                not_settled: 2,
            },
            failed: 0,
            examples: (0..6).map(|i| format!("{n}/{i}")).collect(),
        };
        let mut total = MarkerCheck::default();
        total.add(one(5));
        total.add(one(7));
        assert_eq!(total.pairs, 12);
        assert_eq!(
            total.unread,
            Comparison {
                checked: 12,
                mismatches: 2,
                not_settled: 0
            }
        );
        assert_eq!(total.markers.not_settled, 4);
        assert_eq!(total.examples.len(), EXAMPLES);
        assert_eq!(total.examples[6], "7/0");
    }
}
