//! The quick-start guide's own clients, which nobody here wrote, against the real
//! binary: its browser snippet in headless Chromium and its Python snippet with the
//! `websockets` library, each left connected across many keepalive pings, each ending
//! with a clean close. These are the clients that found the stray bytes after pongs
//! and close echoes; our own Rust clients had tolerated them.
#![allow(clippy::unwrap_used)]

use tests::browser::Browser;
use tests::prelude::*;
use tests::realtime::{group, join};

/// Heartbeat far faster than the defaults, so one test spans many pings and idle
/// timeouts in a few seconds.
fn fast_heartbeat(opts: ServerOptions) -> ServerOptions {
    opts.arg("--ws-ping-interval")
        .arg("0.5")
        .arg("--ws-idle-timeout")
        .arg("2")
}

/// The guide's browser snippet (section 4). Its sends are moved into `onopen`: a
/// browser throws on `send()` before the socket is open, whatever the server.
const BROWSER_SNIPPET: &str = r#"
(async () => {
  const token = TOKEN;
  const conversationId = CONVERSATION;
  const base = `ws://${location.host}`;
  const guide = await new Promise((resolve) => {
    const ws = new WebSocket(`${base}/api/chat/ws/${conversationId}?token=${token}`);
    const log = [];
    ws.onmessage = (event) => {
      const message = JSON.parse(event.data);
      log.push(`${message.sender_username}: ${message.content}`);
      if (message.type === "message" && message.content === "Hello from browser!") {
        // Stay connected across several server pings and idle timeouts, then talk.
        setTimeout(() => ws.send(JSON.stringify({ type: "message", content: "Still here" })), 5000);
      }
      if (message.type === "message" && message.content === "Still here") {
        ws.close();
      }
    };
    ws.onopen = () => {
      ws.send(JSON.stringify({ type: "message", content: "Hello from browser!" }));
      ws.send(JSON.stringify({ type: "typing" }));
    };
    ws.onclose = (e) => resolve({ code: e.code, wasClean: e.wasClean, log });
  });
  const refused = await new Promise((resolve) => {
    const ws = new WebSocket(`${base}/api/chat/ws/${conversationId}?token=not-a-token`);
    const events = [];
    ws.onmessage = (e) => events.push(JSON.parse(e.data));
    ws.onclose = (e) => resolve({ code: e.code, reason: e.reason, wasClean: e.wasClean, events });
  });
  return { guide, refused };
})()
"#;

async fn browser_snippet(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let ([alice], conv) = group(&api, &["browser"]).await?;
    let mut browser = Browser::open(&format!("{}/health", srv.base_url())).await?;
    let script = BROWSER_SNIPPET
        .replace("TOKEN", &json!(alice.token).to_string())
        .replace("CONVERSATION", &json!(conv).to_string());
    let result = browser.evaluate(&script).await?;

    let guide = &result["guide"];
    let log: Vec<&str> = guide["log"]
        .as_array()
        .context("log")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for line in [
        format!("{}: Hello from browser!", alice.username),
        format!("{}: Still here", alice.username),
    ] {
        ensure!(
            log.contains(&line.as_str()),
            "the page never printed {line:?}: {log:?}"
        );
    }
    ensure!(
        guide["code"] == 1000 && guide["wasClean"] == true,
        "ws.close() did not end cleanly: {guide}"
    );

    let refused = &result["refused"];
    ensure!(
        refused["code"] == 1008
            && refused["reason"] == "Invalid token"
            && refused["wasClean"] == true,
        "a refused socket did not close cleanly with 1008: {refused}"
    );
    ensure!(
        refused["events"] == json!([{"type": "error", "detail": "Invalid token"}]),
        "a refused socket's events: {refused}"
    );
    // Everything the browser sent was taken: its two messages are in history.
    let history = api.history_list(&alice, &conv, "").await?;
    ensure!(history.len() == 2, "history after the browser: {history:?}");
    Ok(())
}

/// The guide's Python snippet (section 4): `websockets.connect(uri)`, send, then
/// `async for message in websocket`. It stays connected for `stay` seconds after its
/// first message (the library pings every `ping_interval` seconds and fails the
/// connection on any protocol error), says something else, and leaves. Prints JSON.
const PYTHON_SNIPPET: &str = r#"
import asyncio
import json
import sys

import websockets

async def chat(uri, ping_interval, stay):
    printed = []
    async with websockets.connect(uri, ping_interval=ping_interval) as websocket:
        await websocket.send(json.dumps({'type': 'message', 'content': 'Hello from Python!'}))
        async for message in websocket:
            data = json.loads(message)
            if data['type'] == 'message':
                printed.append(f"{data['sender_username']}: {data['content']}")
                if data['content'] == 'Hello from Python!':
                    await asyncio.sleep(stay)
                    await websocket.send(json.dumps({'type': 'message', 'content': 'Still here'}))
                else:
                    break
    print(json.dumps({'printed': printed, 'close_code': websocket.close_code,
                      'latency': websocket.latency}))

uri, ping_interval, stay = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
asyncio.run(chat(uri, ping_interval, stay))
"#;

async fn run_python_snippet(
    srv: &TestServer,
    ping_interval: &str,
    stay: &str,
) -> anyhow::Result<()> {
    let api = srv.api();
    let ([alice], conv) = group(&api, &["python"]).await?;
    let uri = tests::ws::ws_url(&srv.ws_base_url(), &conv, &alice.token);
    let args = [
        "-c".into(),
        PYTHON_SNIPPET.into(),
        uri,
        ping_interval.into(),
        stay.into(),
    ];
    let out = tests::python::run("websockets", "websockets", &args).await?;
    let result: Value =
        serde_json::from_str(out.trim()).with_context(|| format!("python printed {out}"))?;
    ensure!(
        result["printed"]
            == json!([
                format!("{}: Hello from Python!", alice.username),
                format!("{}: Still here", alice.username)
            ]),
        "{result}"
    );
    ensure!(
        result["close_code"] == 1000,
        "the Python client did not close cleanly: {result}"
    );
    // `latency` is measured from the library's own pings: non-zero once a pong came back.
    ensure!(
        result["latency"].as_f64().is_some_and(|l| l > 0.0),
        "no pong was answered: {result}"
    );
    Ok(())
}

/// The library pinging every 0.2 s for 3 s: many pongs, every one well-formed.
async fn python_snippet(srv: &TestServer) -> anyhow::Result<()> {
    run_python_snippet(srv, "0.2", "3").await
}

/// As the guide runs it, with the library's default 20 s keepalive, connected past
/// its first ping: the case that failed with 1002 after about 20 s.
async fn python_snippet_default_keepalive(srv: &TestServer) -> anyhow::Result<()> {
    run_python_snippet(srv, "20", "22").await
}

/// A Python client that comes back with `since` (the `websockets` library, as the
/// guide's snippet uses it) reads what it missed, in order, then its joined event.
const PYTHON_RESUME: &str = r#"
import asyncio
import json
import sys

import websockets

async def resume(uri, me):
    got = []
    async with websockets.connect(uri) as websocket:
        async for message in websocket:
            data = json.loads(message)
            got.append(data)
            if data['type'] == 'system' and data['sender_id'] == me:
                break
    print(json.dumps(got))

asyncio.run(resume(sys.argv[1], sys.argv[2]))
"#;

async fn python_resumes(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let ([alice, bob], conv) = group(&api, &["pyalice", "pybob"]).await?;
    let (mut a, _) = join(srv, &conv, &alice).await?;
    let (gone, joined) = join(srv, &conv, &bob).await?;
    let since = joined["seq"].as_u64().context("joined without seq")?;
    gone.close().await?;
    let mut live = Vec::new();
    for text in ["while you were out", "and this too"] {
        live.push(a.send_message(text).await?);
    }
    let first = live[0]["message_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    a.send_json(&json!({"type": "edit", "message_id": first, "content": "edited"}))
        .await?;
    live.push(a.recv_type("edit").await?);
    let uri = format!(
        "{}&since={since}",
        tests::ws::ws_url(&srv.ws_base_url(), &conv, &bob.token)
    );
    let args = ["-c".into(), PYTHON_RESUME.into(), uri, bob.user_id.clone()];
    let out = tests::python::run("websockets", "websockets", &args).await?;
    let got: Vec<Value> =
        serde_json::from_str(out.trim()).with_context(|| format!("python printed {out}"))?;
    let (joined, replayed) = got.split_last().context("python got nothing")?;
    ensure!(
        replayed == live.as_slice(),
        "python got {replayed:?}, live was {live:?}"
    );
    ensure!(joined["seq"] == 3, "joined at {joined}");
    a.close().await
}

/// A Python client on the user stream (the `websockets` library): it reads `ready`,
/// resumes one conversation from its start, sends into another by `conversation_id`,
/// and prints every message it got, by conversation, once its own is acknowledged.
const PYTHON_STREAM: &str = r#"
import asyncio
import json
import sys

import websockets

async def stream(uri, resumed, other, got):
    async with websockets.connect(uri) as websocket:
        got['ready'] = json.loads(await websocket.recv())
        await websocket.send(json.dumps({'type': 'resume', 'positions': {resumed: 0}}))
        await websocket.send(json.dumps({'type': 'message', 'conversation_id': other,
                                         'content': 'from python', 'client_id': 'py-1'}))
        acked = False
        async for message in websocket:
            data = json.loads(message)
            if data['type'] == 'message':
                got['got'][data['conversation_id']].append(data['content'])
                acked = acked or data.get('client_id') == 'py-1'
            elif data['type'] == 'error':
                got['got']['error'] = data
                break
            # The ack of the send and the replay of the other conversation may come
            # in either order.
            if acked and len(got['got'][resumed]) == 2:
                break

resumed, other = sys.argv[2], sys.argv[3]
got = {'ready': {}, 'got': {resumed: [], other: []}}
try:
    asyncio.run(asyncio.wait_for(stream(sys.argv[1], resumed, other, got), 30))
except asyncio.TimeoutError:
    got['got']['error'] = 'timed out'
ready = got['ready']
print(json.dumps({'ready': ready.get('type'), 'positions': ready.get('positions'),
                  'got': got['got']}))
"#;

async fn python_user_stream(srv: &TestServer) -> anyhow::Result<()> {
    let api = srv.api();
    let [alice, bob] = api.new_users(["pystream_a", "pystream_b"]).await?;
    let resumed = api.new_conversation(&bob, "resumed", &[&alice]).await?;
    let other = api.new_conversation(&alice, "other", &[&bob]).await?;
    let (mut b, _) = tests::realtime::join(srv, &resumed, &bob).await?;
    b.send_message("one").await?;
    b.send_message("two").await?;
    let args = [
        "-c".into(),
        PYTHON_STREAM.into(),
        tests::ws::stream_url(&srv.ws_base_url(), &alice.token),
        resumed.clone(),
        other.clone(),
    ];
    let out = tests::python::run("websockets", "websockets", &args).await?;
    let result: Value =
        serde_json::from_str(out.trim()).with_context(|| format!("python printed {out}"))?;
    ensure!(
        result["ready"] == "ready"
            && result["positions"] == json!({resumed.clone(): 2, other.clone(): 0}),
        "{result}"
    );
    ensure!(
        result["got"] == json!({resumed.clone(): ["one", "two"], other.clone(): ["from python"]}),
        "{result}"
    );
    let history = api.history_list(&bob, &other, "").await?;
    ensure!(
        history.len() == 1,
        "the Python send is stored once: {history:?}"
    );
    Ok(())
}

tests::e2e!(options = super::fast_heartbeat; browser_snippet, python_snippet);
tests::e2e_on!(python_user_stream, |o| o, [sqlite_uring => (Sqlite, Uring), postgres_epoll => (Postgres, Epoll)]);
tests::e2e_on!(python_resumes, |o| o, [sqlite_epoll => (Sqlite, Epoll), postgres_uring => (Postgres, Uring)]);
tests::e2e_on!(python_snippet_default_keepalive, |o| o, [sqlite_uring => (Sqlite, Uring)]);
