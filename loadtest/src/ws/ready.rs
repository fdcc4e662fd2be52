//! The user stream's opening, part of connecting it: read its first event, `ready`,
//! check that it carries the conversation of every seat (a conversation it left out
//! would never deliver, and the seat would wait for a `joined` event that never
//! comes), then start it with `resume` naming the last position each seat has seen;
//! seats without one (never joined yet) start live. The server holds every event back
//! until this first event, so the seam of each resumed conversation is exact.
//!
//! It only opens: what comes after `resume` (replays, `joined` events, live events)
//! is the session's.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

use super::seat::Seat;
use super::{short, Ws};
use crate::state::Run;

/// The fields of the first event that matter here.
#[derive(Deserialize)]
struct First {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    detail: Option<String>,
    /// Every conversation the stream carries, with its position now.
    #[serde(default)]
    positions: HashMap<String, u64>,
}

/// Reads `ready` and sends `resume`; the stream is then the session's.
pub(super) async fn start(run: &Run, mut ws: Ws, seats: &[Seat]) -> Result<Ws, String> {
    let ready = timeout(
        run.config.scenario.join_timeout(),
        first_event(run, &mut ws),
    )
    .await
    .map_err(|_| "no ready event: timed out".to_string())??;
    let missing = seats
        .iter()
        .filter(|seat| !ready.positions.contains_key(&seat.conv_id))
        .count();
    if missing > 0 {
        return Err(format!(
            "ready: {missing} of the user's {} conversations not carried",
            seats.len()
        ));
    }
    let positions: serde_json::Map<String, serde_json::Value> = seats
        .iter()
        .filter_map(|seat| Some((seat.conv_id.clone(), seat.since()?.into())))
        .collect();
    let resume = serde_json::json!({ "type": "resume", "positions": positions });
    ws.send(Message::text(resume.to_string()))
        .await
        .map_err(|e| format!("write: {}", short(&e.to_string())))?;
    Ok(ws)
}

/// The stream's first event, which must be `ready` (a refusal is an `error`).
async fn first_event(run: &Run, ws: &mut Ws) -> Result<First, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let counters = &run.counters;
                counters.frames_received.fetch_add(1, Ordering::Relaxed);
                counters
                    .bytes_received
                    .fetch_add(text.len() as u64, Ordering::Relaxed);
                let first: First = serde_json::from_str(text.as_str())
                    .map_err(|e| format!("ready: unparsable: {}", short(&e.to_string())))?;
                return match first.kind.as_str() {
                    "ready" => Ok(first),
                    "error" => Err(format!(
                        "refused: {}",
                        first.detail.as_deref().unwrap_or("(no detail)")
                    )),
                    other => Err(format!("ready: the first event was {}", short(other))),
                };
            }
            Some(Ok(Message::Close(frame))) => {
                return Err(match frame {
                    Some(f) => format!("server closed with {}", u16::from(f.code)),
                    None => "server closed without a code".to_string(),
                })
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("read: {}", short(&e.to_string()))),
            None => return Err("connection ended without a close".to_string()),
        }
    }
}
