//! Resume: how long one reconnecting client waits for a replay of 1,000 missed events
//! (connect with `since=0` to the first replayed event, and to the last), against
//! reading the same 1,000 messages over REST (ten pages of 100), in the same run.
//!
//! Run: `cargo bench -p benches --bench replay` (starts a release server on an
//! ephemeral port with the embedded store).

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const EVENTS: usize = 1000;
const ROUNDS: usize = 7;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let (server, _dir) = benches::release_server(
        "replay",
        &[
            "--ws-rate-per-second",
            "1000000",
            "--ws-rate-burst",
            "1000000",
        ],
    )?;
    let host = server.base_url().to_string();
    let ws_host = host.replacen("http", "ws", 1);
    let http = reqwest::Client::new();
    let prefix = format!("replay{}", std::process::id());
    let mut tokens = Vec::new();
    let mut ids = Vec::new();
    for who in ["writer", "reader"] {
        let body = json!({"username": format!("{prefix}_{who}"), "password": "replay-password-1"});
        http.post(format!("{host}/api/auth/register"))
            .json(&body)
            .send()
            .await?;
        let login: Value = http
            .post(format!("{host}/api/auth/login"))
            .json(&body)
            .send()
            .await?
            .json()
            .await?;
        tokens.push(
            login["access_token"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        ids.push(login["user_id"].as_str().unwrap_or_default().to_string());
    }
    let conversation: Value = http
        .post(format!("{host}/api/chat/conversations"))
        .bearer_auth(&tokens[0])
        .json(&json!({"name": "replay", "is_group": true, "participant_ids": [ids[1]]}))
        .send()
        .await?
        .json()
        .await?;
    let conv = conversation["id"].as_str().unwrap_or_default().to_string();
    let url = |token: &str| format!("{ws_host}/api/chat/ws/{conv}?token={token}");

    // The writer posts the events the reader will have missed.
    let (mut writer, _) = tokio_tungstenite::connect_async(url(&tokens[0])).await?;
    for i in 0..EVENTS {
        let text = json!({"type": "message", "content": format!("missed message {i}: an ordinary line of chat")});
        writer.send(Message::text(text.to_string())).await?;
    }
    let mut acked = 0;
    while acked < EVENTS {
        if let Some(Message::Text(t)) = writer.next().await.transpose()? {
            let v: Value = serde_json::from_str(&t)?;
            if v["type"] == "message" {
                acked += 1;
            }
        }
    }

    let mut first = Vec::new();
    let mut last = Vec::new();
    let mut rest = Vec::new();
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let (mut reader, _) =
            tokio_tungstenite::connect_async(format!("{}&since=0", url(&tokens[1]))).await?;
        let mut seen = 0;
        while seen < EVENTS {
            let Some(Message::Text(t)) = reader.next().await.transpose()? else {
                continue;
            };
            let v: Value = serde_json::from_str(&t)?;
            if v["type"] == "message" {
                seen += 1;
                if seen == 1 {
                    first.push(started.elapsed());
                }
            }
        }
        last.push(started.elapsed());
        reader.close(None).await?;

        let started = Instant::now();
        let mut before: Option<String> = None;
        let mut read = 0;
        while read < EVENTS {
            let mut url = format!("{host}/api/chat/conversations/{conv}/messages?limit=100");
            if let Some(b) = &before {
                url.push_str(&format!("&before={b}"));
            }
            let page: Vec<Value> = http
                .get(url)
                .bearer_auth(&tokens[1])
                .send()
                .await?
                .json()
                .await?;
            anyhow::ensure!(!page.is_empty(), "history ended after {read}");
            read += page.len();
            before = page[0]["id"].as_str().map(str::to_owned);
        }
        rest.push(started.elapsed());
    }
    println!("replay of {EVENTS} events to one reconnecting client, median of {ROUNDS} rounds:");
    println!(
        "  first replayed event    {:>8.2} ms after connect",
        ms(median(&mut first))
    );
    println!(
        "  last replayed event     {:>8.2} ms after connect",
        ms(median(&mut last))
    );
    println!(
        "  same messages over REST {:>8.2} ms (10 pages of 100)",
        ms(median(&mut rest))
    );
    Ok(())
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
