//! After the run: read every conversation's whole history back over REST (pages of
//! 100, newest first, `before=` the oldest id seen) and check that every acknowledged
//! message is there, once (resent ones too: a repeated `client_id` stores nothing), and
//! that each sender's messages are in the order sent, except resent ones, which take
//! their place when the resend is committed. It only reads, the run's records and the
//! server's history alike.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};

use crate::state::{lock, parse_tag, Conv, Run};

const PAGE: usize = 100;
const PARALLEL: usize = 8;

/// What the read-back found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Persistence {
    pub conversations: usize,
    pub conversations_read: usize,
    pub history_messages: u64,
    pub acknowledged: u64,
    /// Acknowledged messages found in history.
    pub found: u64,
    /// Acknowledged messages missing from history: must be 0.
    pub lost: u64,
    /// Messages in history whose acknowledgement never came (allowed: the ack was lost
    /// with its connection, the message was committed).
    pub persisted_unacknowledged: u64,
    /// Messages the server refused with an error but stored anyway (must be 0).
    pub persisted_refused: u64,
    /// The same message twice in history (must be 0).
    pub duplicates: u64,
    /// A sender's messages out of order in history (must be 0).
    pub out_of_order: u64,
    /// Messages without this run's tag (other clients, earlier runs).
    pub foreign: u64,
    /// Conversations that could not be read, with the reason.
    pub errors: Vec<String>,
    /// Every conversation was read completely.
    pub complete: bool,
}

#[derive(Deserialize)]
struct HistoryMessage {
    id: String,
    content: String,
}

struct ConvCheck {
    read: bool,
    messages: u64,
    found: u64,
    lost: u64,
    acknowledged: u64,
    persisted_unacknowledged: u64,
    persisted_refused: u64,
    duplicates: u64,
    out_of_order: u64,
    foreign: u64,
    error: Option<String>,
}

pub async fn verify(run: &Run) -> Persistence {
    let client = &run.clients.http;
    let checks: Vec<ConvCheck> = stream::iter(run.convs.iter())
        .map(|conv| check(run, client, conv))
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    let mut p = Persistence {
        conversations: run.convs.len(),
        ..Persistence::default()
    };
    for c in checks {
        p.conversations_read += usize::from(c.read);
        p.history_messages += c.messages;
        p.acknowledged += c.acknowledged;
        p.found += c.found;
        p.lost += c.lost;
        p.persisted_unacknowledged += c.persisted_unacknowledged;
        p.persisted_refused += c.persisted_refused;
        p.duplicates += c.duplicates;
        p.out_of_order += c.out_of_order;
        p.foreign += c.foreign;
        if let Some(e) = c.error {
            if p.errors.len() < 20 {
                p.errors.push(e);
            }
        }
    }
    p.complete = p.conversations_read == p.conversations;
    p
}

async fn check(run: &Run, client: &reqwest::Client, conv: &Conv) -> ConvCheck {
    let mut out = ConvCheck {
        read: false,
        messages: 0,
        found: 0,
        lost: 0,
        acknowledged: 0,
        persisted_unacknowledged: 0,
        persisted_refused: 0,
        duplicates: 0,
        out_of_order: 0,
        foreign: 0,
        error: None,
    };
    let acknowledged = run.acknowledged(conv);
    out.acknowledged = acknowledged.len() as u64;
    let Some(info) = conv.info.get() else {
        // Never created (its members all failed to set up): nothing was sent in it.
        out.read = acknowledged.is_empty();
        if !out.read {
            out.error = Some(format!("conversation #{} has no id", conv.index));
        }
        return out;
    };
    // Pages come newest first; each page is oldest first.
    let mut pages: Vec<Vec<HistoryMessage>> = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut url = format!(
            "{}/api/chat/conversations/{}/messages?limit={PAGE}",
            run.base_url, info.id
        );
        if let Some(b) = &before {
            url.push_str("&before=");
            url.push_str(b);
        }
        let page = match fetch(client, &url, &info.owner_token).await {
            Ok(page) => page,
            Err(e) => {
                out.error = Some(format!("conversation {}: {e}", info.id));
                return out;
            }
        };
        let full = page.len() == PAGE;
        before = page.first().map(|m| m.id.clone());
        pages.push(page);
        if !full || before.is_none() {
            break;
        }
    }
    out.read = true;
    let state = lock(&conv.state);
    // Chronological order.
    let mut seen: HashMap<(usize, usize), u32> = HashMap::new();
    let mut last_seq: HashMap<usize, usize> = HashMap::new();
    for message in pages.iter().rev().flatten() {
        out.messages += 1;
        let Some(tag) = parse_tag(&message.content) else {
            out.foreign += 1;
            continue;
        };
        if tag.run != run.run_tag || tag.conv != conv.index {
            out.foreign += 1;
            continue;
        }
        let count = seen.entry((tag.slot, tag.seq)).or_insert(0);
        *count += 1;
        if *count > 1 {
            out.duplicates += 1;
            continue;
        }
        let resent = state
            .records
            .get(tag.slot)
            .and_then(|r| r.get(tag.seq))
            .is_some_and(|rec| rec.resends > 0);
        if resent {
            continue;
        }
        match last_seq.get(&tag.slot) {
            Some(&last) if tag.seq < last => out.out_of_order += 1,
            _ => {
                last_seq.insert(tag.slot, tag.seq);
            }
        }
    }
    for &(slot, seq) in &acknowledged {
        if seen.contains_key(&(slot, seq)) {
            out.found += 1;
        } else {
            out.lost += 1;
        }
    }
    for &(slot, seq) in seen.keys() {
        match state.records.get(slot).and_then(|r| r.get(seq)) {
            Some(rec) if rec.failed => out.persisted_refused += 1,
            Some(rec) if rec.ack_us == 0 => out.persisted_unacknowledged += 1,
            Some(_) => {}
            None => out.foreign += 1,
        }
    }
    out
}

async fn fetch(
    client: &reqwest::Client,
    url: &str,
    token: &str,
) -> Result<Vec<HistoryMessage>, String> {
    get_retried(client, url, token, "history")
        .await?
        .json::<Vec<HistoryMessage>>()
        .await
        .map_err(|e| format!("unexpected history body: {e}"))
}

/// A successful answer to `GET url` as `token`'s user, tried again (up to 4 times, with
/// a growing pause) on a transport error or a 5xx; any other status is the error, named
/// after `what` was asked for. The checks after a run read the server with it.
pub(crate) async fn get_retried(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    what: &str,
) -> Result<reqwest::Response, String> {
    let mut last_error = String::new();
    for attempt in 0..4u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
        }
        let response = match client.get(url).bearer_auth(token).send().await {
            Ok(r) => r,
            Err(e) => {
                last_error = format!("request failed: {e}");
                continue;
            }
        };
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        last_error = format!("{what} answered {status}");
        if !status.is_server_error() {
            break;
        }
    }
    Err(last_error)
}
