//! Hostile clients beside the normal users (`--hostile N`: N clients of each kind),
//! from the warm-up to the end of the measured time: slow readers, stalled request
//! bodies, floods beyond the rate limit and oversized fields. They get accounts of
//! their own (a flood must not spend a normal user's event budget) and are added to
//! the first conversation, where normal users chat, so their traffic meets theirs.
//!
//! It records what each client got (status codes, `error` details, close codes) and
//! never judges it: a hostile client being refused is the point, so nothing here can
//! fail the run. The normal users' verdict is the report's, as in any run. Every
//! client is bounded in count and time and ends when the run stops.
//!
//! Layout: this file owns the accounts, the tasks and the summary; `clients` what each
//! kind of client does.

mod clients;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::console::say;
use crate::state::Run;
use clients::Kind;

/// What the hostile clients of one kind got.
#[derive(Clone, Debug, Serialize)]
pub struct HostileKind {
    pub kind: &'static str,
    /// What a client of this kind does.
    pub what: &'static str,
    pub clients: usize,
    /// Events or requests they sent.
    pub sent: u64,
    /// What came back, by outcome (status code, `error` detail, close code).
    pub outcomes: BTreeMap<String, u64>,
    /// The longest a client waited for the server's answer, when it got one.
    pub slowest_answer_ms: Option<f64>,
}

/// Every kind of hostile client, and what kept any of them from acting.
#[derive(Clone, Debug, Serialize)]
pub struct HostileReport {
    pub clients_per_kind: usize,
    pub kinds: Vec<HostileKind>,
    /// The hostile clients' own setup failures (accounts, the conversation).
    pub setup_problems: Vec<String>,
}

/// What one hostile client got.
pub struct Got {
    pub kind: Kind,
    pub sent: u64,
    pub outcomes: BTreeMap<String, u64>,
    pub answer_ms: Option<f64>,
}

impl Got {
    fn new(kind: Kind) -> Self {
        Self {
            kind,
            sent: 0,
            outcomes: BTreeMap::new(),
            answer_ms: None,
        }
    }

    /// One more of `outcome`.
    pub fn note(&mut self, outcome: impl Into<String>) {
        *self.outcomes.entry(outcome.into()).or_insert(0) += 1;
    }
}

/// A hostile client's account, a member of the target conversation.
#[derive(Clone)]
pub struct Hostile {
    pub token: String,
    pub user_id: String,
    pub conv_id: String,
}

/// Runs every hostile client until the run stops; returns what they got.
pub async fn run(run: Arc<Run>) -> HostileReport {
    let n = run.config.scenario.hostile;
    let mut setup_problems = Vec::new();
    let mut tasks = Vec::new();
    say(&format!(
        "hostile clients: {n} of each kind beside the normal users"
    ));
    for i in 0..n {
        for kind in Kind::ALL {
            let account = if kind.needs_account() {
                match account(&run, kind, i).await {
                    Ok(account) => Some(account),
                    Err(e) => {
                        setup_problems.push(format!("{} #{i}: {e:#}", kind.name()));
                        continue;
                    }
                }
            } else {
                None
            };
            let run = Arc::clone(&run);
            tasks.push(tokio::spawn(async move {
                clients::act(&run, kind, account).await
            }));
        }
    }
    let mut kinds: BTreeMap<&'static str, HostileKind> = BTreeMap::new();
    for task in tasks {
        let Ok(got) = task.await else {
            setup_problems.push("a hostile client panicked".into());
            continue;
        };
        let entry = kinds.entry(got.kind.name()).or_insert_with(|| HostileKind {
            kind: got.kind.name(),
            what: got.kind.what(),
            clients: 0,
            sent: 0,
            outcomes: BTreeMap::new(),
            slowest_answer_ms: None,
        });
        entry.clients += 1;
        entry.sent += got.sent;
        for (outcome, n) in got.outcomes {
            *entry.outcomes.entry(outcome).or_insert(0) += n;
        }
        if let Some(ms) = got.answer_ms {
            entry.slowest_answer_ms = Some(entry.slowest_answer_ms.unwrap_or(0.0).max(ms));
        }
    }
    HostileReport {
        clients_per_kind: n,
        kinds: kinds.into_values().collect(),
        setup_problems,
    }
}

#[derive(Deserialize)]
struct LoginReply {
    access_token: String,
    user_id: String,
}

/// Registers and logs in hostile client `i` of `kind`, and has the first
/// conversation's creator add it there.
async fn account(run: &Run, kind: Kind, i: usize) -> anyhow::Result<Hostile> {
    let conv = run.convs[0]
        .info
        .get()
        .context("the first conversation was never created")?;
    let credentials = json!({
        "username": format!("{}-hostile-{}-{i}", run.user_prefix, kind.slug()),
        "password": run.config.password,
    });
    let base = &run.nodes[0].base_url;
    let http = &run.clients.http;
    // Password hashing may be busy (503): retry, as the users do.
    let mut delay = Duration::from_millis(250);
    let mut login = None;
    for _ in 0..20 {
        let registered = http
            .post(format!("{base}/api/auth/register"))
            .json(&credentials)
            .send()
            .await?;
        if registered.status().as_u16() == 503 {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(4));
            continue;
        }
        let reply = http
            .post(format!("{base}/api/auth/login"))
            .json(&credentials)
            .send()
            .await?;
        match reply.status().as_u16() {
            200 => {
                login = Some(reply.json::<LoginReply>().await?);
                break;
            }
            503 => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(4));
            }
            other => bail!("login answered {other}"),
        }
    }
    let login = login.context("register/login still busy after 20 tries")?;
    let added = http
        .post(format!(
            "{base}/api/chat/conversations/{}/participants",
            conv.id
        ))
        .bearer_auth(&conv.owner_token)
        .json(&json!({ "user_id": login.user_id }))
        .send()
        .await?;
    if !added.status().is_success() {
        bail!("adding it to the conversation answered {}", added.status());
    }
    Ok(Hostile {
        token: login.access_token,
        user_id: login.user_id,
        conv_id: conv.id.clone(),
    })
}
