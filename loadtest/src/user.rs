//! The Goose scenario: what one simulated user does, with every REST call made through
//! Goose's client so Goose times and reports it.
//!
//! - on start ("join"): register and log in (with a fixed `--user-prefix`, log in first
//!   and register only if the account does not exist yet),
//!   create each of its group conversations or get invited into it by the member who
//!   created it, load recent history, open one WebSocket per conversation, or with
//!   `--user-stream` one user stream for all of them once it is in every one (the
//!   connect time is a Goose custom request, `WS connect`), then wait until every user
//!   is in; in a big room (`--room-size`) the socket waits for the join storm's signal,
//!   so every member connects at once;
//! - then, every few seconds (`--think-time`), either "read history" of one of its
//!   conversations or "reconnect" the socket of one of them (close it, open it again,
//!   read that conversation's history), by `--history-weight` / `--reconnect-weight`.
//!
//! The chatting itself happens in the socket tasks (see `ws`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use goose::goose::GooseResponse;
use goose::prelude::*;
use rand::Rng;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::oneshot;

use crate::state::{lock, Account, ConvInfo, Run};
use crate::ws::{self, Command, ConnectOutcome, SeatSpec, SocketSpec};

/// The user's index among the simulated users, kept in Goose's session data.
#[derive(Clone, Copy, Debug)]
struct Me {
    index: usize,
    ok: bool,
}

type TxFuture<'r> = Pin<Box<dyn Future<Output = TransactionResult> + Send + 'r>>;

fn transaction(
    run: &Arc<Run>,
    f: for<'r> fn(Arc<Run>, &'r mut GooseUser) -> TxFuture<'r>,
) -> Transaction {
    let run = Arc::clone(run);
    let function: TransactionFunction = Arc::new(move |user| f(Arc::clone(&run), user));
    Transaction::new(function)
}

/// The scenario every simulated user runs.
pub fn scenario(run: &Arc<Run>) -> Result<Scenario, GooseError> {
    let think = run.config.think_time;
    let mut scenario = scenario!("ChatUser")
        .set_wait_time(
            Duration::from_secs_f64(think * 0.5),
            Duration::from_secs_f64(think * 1.5),
        )?
        .register_transaction(
            transaction(run, |run, user| Box::pin(join(run, user)))
                .set_name("join")
                .set_on_start(),
        );
    if run.config.history_weight > 0 {
        scenario = scenario.register_transaction(
            transaction(run, |run, user| Box::pin(read_history(run, user)))
                .set_name("read history")
                .set_weight(run.config.history_weight)?,
        );
    }
    if run.config.reconnect_weight > 0 {
        scenario = scenario.register_transaction(
            transaction(run, |run, user| Box::pin(reconnect(run, user)))
                .set_name("reconnect")
                .set_weight(run.config.reconnect_weight)?,
        );
    }
    Ok(scenario)
}

fn custom(message: impl Into<String>) -> Box<TransactionError> {
    Box::new(TransactionError::Custom(message.into()))
}

/// A REST call through Goose's client, named for the report (ids folded into `{id}`).
async fn call(
    run: &Run,
    user: &mut GooseUser,
    method: GooseMethod,
    path: &str,
    name: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> Result<GooseResponse, Box<TransactionError>> {
    let mut builder = user.get_request_builder(&method, path)?;
    if let Some(token) = token {
        builder = builder.bearer_auth(token);
    }
    if let Some(body) = body {
        builder = builder.json(body);
    }
    if !run.config.rest_keep_alive {
        builder = builder.header(reqwest::header::CONNECTION, "close");
    }
    let request = GooseRequest::builder()
        .method(method)
        .path(path)
        .name(name)
        .set_request_builder(builder)
        .build();
    user.request(request).await
}

fn status(response: &GooseResponse) -> Option<u16> {
    response.response.as_ref().ok().map(|r| r.status().as_u16())
}

async fn body<T: for<'de> Deserialize<'de>>(
    response: GooseResponse,
) -> Result<T, Box<TransactionError>> {
    let response = response.response.map_err(|e| custom(e.to_string()))?;
    response
        .json::<T>()
        .await
        .map_err(|e| custom(format!("unexpected body: {e}")))
}

/// Waits for a permit of the auth gate, or for the end of the run.
async fn auth_permit(run: &Run) -> Result<tokio::sync::SemaphorePermit<'_>, Box<TransactionError>> {
    tokio::select! {
        permit = run.auth_gate.acquire() => permit.map_err(|_| custom("auth gate closed")),
        () = run.until_stopping() => Err(custom("run ended during setup")),
    }
}

/// Register/login may answer 503 while the server's hashing queue is full: retry.
async fn auth_call(
    run: &Run,
    user: &mut GooseUser,
    path: &str,
    name: &str,
    body: &serde_json::Value,
) -> Result<GooseResponse, Box<TransactionError>> {
    let mut delay = Duration::from_millis(250);
    for _ in 0..20 {
        let response = {
            let _permit = auth_permit(run).await?;
            call(run, user, GooseMethod::Post, path, name, None, Some(body)).await?
        };
        if status(&response) != Some(503) {
            return Ok(response);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(4));
    }
    Err(custom(format!("{name}: still 503 after 20 tries")))
}

#[derive(Deserialize)]
struct LoginReply {
    access_token: String,
    user_id: String,
}

#[derive(Deserialize)]
struct Created {
    id: String,
}

async fn join(run: Arc<Run>, user: &mut GooseUser) -> TransactionResult {
    // Over TLS, Goose's client (built without our trust roots) is swapped for the run's:
    // one client, one connection pool, shared by every user as Goose's would be.
    if run.clients.tls.is_some() {
        user.client = run.clients.http.clone();
    }
    let index = run.next_user.fetch_add(1, Ordering::Relaxed);
    if index >= run.plan.users() {
        // More Goose users than planned (should not happen): stay idle.
        user.set_session_data(Me { index, ok: false });
        return Ok(());
    }
    let result = setup(&run, user, index).await;
    user.set_session_data(Me {
        index,
        ok: result.is_ok(),
    });
    if result.is_err() {
        run.counters.users_failed.fetch_add(1, Ordering::Relaxed);
    }
    run.counters.users_ready.fetch_add(1, Ordering::Relaxed);
    // Wait for everyone, so the measured time starts with every user connected.
    run.until_chat().await;
    // Goose starts a user's first activity right after this transaction: spread the
    // first ones over a think time, as the later ones are, or every user would read
    // history at the same instant (19,000 REST connections at once after a room's
    // join storm, on top of its 19,000 sockets).
    let first = rand::rng().random_range(0.0..run.config.think_time);
    let _ = run.pause(Duration::from_secs_f64(first)).await;
    result
}

async fn setup(run: &Arc<Run>, user: &mut GooseUser, index: usize) -> TransactionResult {
    let credentials = json!({
        "username": run.username(index),
        "password": run.config.password,
    });
    // With a fixed --user-prefix the accounts usually exist from an earlier run: log in
    // first (one password hash instead of two) and register only when that fails.
    let mut login = None;
    if run.config.user_prefix.is_some() {
        let mut attempt = auth_call(
            run,
            user,
            "/api/auth/login",
            "/api/auth/login",
            &credentials,
        )
        .await?;
        if status(&attempt) == Some(200) {
            login = Some(attempt);
        } else if status(&attempt) == Some(401) {
            // Not registered yet: expected on the first run with this prefix.
            let _ = user.set_success(&mut attempt.request);
        }
    }
    let login = match login {
        Some(login) => login,
        None => {
            let mut registered = auth_call(
                run,
                user,
                "/api/auth/register",
                "/api/auth/register",
                &credentials,
            )
            .await?;
            match status(&registered) {
                Some(201) => {}
                // Taken: the account exists, reuse it.
                Some(409) => {
                    let _ = user.set_success(&mut registered.request);
                }
                other => return Err(custom(format!("register answered {other:?}"))),
            }
            auth_call(
                run,
                user,
                "/api/auth/login",
                "/api/auth/login",
                &credentials,
            )
            .await?
        }
    };
    if status(&login) != Some(200) {
        return Err(custom(format!("login answered {:?}", status(&login))));
    }
    let login: LoginReply = body(login).await?;
    let account = Account {
        user_id: login.user_id,
        token: login.access_token,
    };
    let _ = run.accounts[index].set(account.clone());

    let mut carried = Vec::new();
    for (layer, seat) in run.plan.seats(index).into_iter().enumerate() {
        let conv = &run.convs[seat.conversation];
        // The first member to get here creates the conversation; the others are added
        // by it (a member invites them), with its token.
        let mut created_here = false;
        let info = {
            let flag = &mut created_here;
            let creator = &mut *user;
            let account = &account;
            conv.info
                .get_or_try_init(move || {
                    *flag = true;
                    create_conversation(run, creator, conv.index, account)
                })
                .await?
                .clone()
        };
        if !created_here {
            let path = format!("/api/chat/conversations/{}/participants", info.id);
            let response = call(
                run,
                user,
                GooseMethod::Post,
                &path,
                "/api/chat/conversations/{id}/participants",
                Some(&info.owner_token),
                Some(&json!({ "user_id": account.user_id })),
            )
            .await?;
            if status(&response) != Some(200) {
                return Err(custom(format!(
                    "add participant answered {:?}",
                    status(&response)
                )));
            }
        }
        history(run, user, &info.id, &account.token).await?;

        let seat = SeatSpec {
            conv: seat.conversation,
            slot: seat.slot,
            conv_id: info.id.clone(),
        };
        if run.config.scenario.user_stream {
            // Opened once the user is in every conversation: the stream carries the
            // conversations it is a member of when it opens.
            carried.push(seat);
            continue;
        }
        let room = run.config.scenario.room();
        if room {
            // Every member connects at once, once everyone is in the room: the join
            // storm (the driver gives the signal and times it).
            run.counters.users_prepared.fetch_add(1, Ordering::Relaxed);
            run.until_storm().await;
            if run.stopping() {
                return Err(custom("the run ended before the join storm"));
            }
        }
        let spec = SocketSpec {
            user: index,
            user_id: account.user_id.clone(),
            token: account.token.clone(),
            user_stream: false,
            seats: vec![seat],
        };
        open_socket(run, user, layer, spec).await?;
    }
    if run.config.scenario.user_stream {
        let spec = SocketSpec {
            user: index,
            user_id: account.user_id.clone(),
            token: account.token.clone(),
            user_stream: true,
            seats: carried,
        };
        open_socket(run, user, 0, spec).await?;
    }
    Ok(())
}

/// Starts the task of the user's socket number `socket` (its layer, or 0 for its user
/// stream) and records how its first connect went.
async fn open_socket(
    run: &Arc<Run>,
    user: &mut GooseUser,
    socket: usize,
    spec: SocketSpec,
) -> TransactionResult {
    let index = spec.user;
    let user_stream = spec.user_stream;
    let (handle, first) = ws::spawn(Arc::clone(run), spec);
    *lock(&run.sockets_of(index)[socket]) = Some(handle);
    let outcome = first.await.unwrap_or(ConnectOutcome {
        ok: false,
        elapsed: Duration::ZERO,
        error: Some("socket task ended".into()),
    });
    if run.config.scenario.room() && outcome.ok {
        lock(&run.counters.storm_joins_us).push(run.now_us());
    }
    record_connect(user, user_stream, &outcome).await;
    if !outcome.ok {
        // The socket task keeps retrying in the background.
        return Err(custom(format!(
            "websocket connect failed: {}",
            outcome.error.unwrap_or_default()
        )));
    }
    Ok(())
}

/// Creates conversation `index` with its creator as the only member.
async fn create_conversation(
    run: &Run,
    user: &mut GooseUser,
    index: usize,
    account: &Account,
) -> Result<ConvInfo, Box<TransactionError>> {
    let payload = json!({
        "name": format!("loadtest {} #{index}", run.run_tag),
        "description": "created by the capacity harness",
        "is_group": true,
        "participant_ids": [],
    });
    let response = call(
        run,
        user,
        GooseMethod::Post,
        "/api/chat/conversations",
        "/api/chat/conversations",
        Some(&account.token),
        Some(&payload),
    )
    .await?;
    if status(&response) != Some(201) {
        return Err(custom(format!(
            "create conversation answered {:?}",
            status(&response)
        )));
    }
    let created: Created = body(response).await?;
    Ok(ConvInfo {
        id: created.id,
        owner_token: account.token.clone(),
    })
}

async fn record_connect(user: &mut GooseUser, user_stream: bool, outcome: &ConnectOutcome) {
    let path = if user_stream {
        "/api/chat/ws"
    } else {
        "/api/chat/ws/{id}"
    };
    let _ = user
        .record_custom_request_duration(
            "WS",
            path,
            outcome.elapsed,
            outcome.ok,
            outcome.ok.then_some(101),
            outcome.error.as_deref(),
        )
        .await;
}

async fn history(run: &Run, user: &mut GooseUser, conv_id: &str, token: &str) -> TransactionResult {
    let path = format!("/api/chat/conversations/{conv_id}/messages?limit=50");
    let response = call(
        run,
        user,
        GooseMethod::Get,
        &path,
        "/api/chat/conversations/{id}/messages",
        Some(token),
        None,
    )
    .await?;
    run.counters.history_reads.fetch_add(1, Ordering::Relaxed);
    match status(&response) {
        Some(200) => Ok(()),
        other => Err(custom(format!("history answered {other:?}"))),
    }
}

/// The user's index, its account and a random one of its conversations.
fn pick(run: &Run, user: &GooseUser) -> Option<(usize, usize, Account, String)> {
    let me = *user.get_session_data::<Me>()?;
    if !me.ok || run.stopping() {
        return None;
    }
    let account = run.accounts.get(me.index)?.get()?.clone();
    let layer = rand::rng().random_range(0..run.plan.layers());
    let seat = run.plan.seat(me.index, layer);
    let conv_id = run.convs[seat.conversation].info.get()?.id.clone();
    Some((me.index, layer, account, conv_id))
}

async fn read_history(run: Arc<Run>, user: &mut GooseUser) -> TransactionResult {
    let Some((_, _, account, conv_id)) = pick(&run, user) else {
        return Ok(());
    };
    history(&run, user, &conv_id, &account.token).await
}

async fn reconnect(run: Arc<Run>, user: &mut GooseUser) -> TransactionResult {
    let Some((index, layer, account, conv_id)) = pick(&run, user) else {
        return Ok(());
    };
    // The conversation's own socket, or the user stream carrying it.
    let socket = if run.config.scenario.user_stream {
        0
    } else {
        layer
    };
    let commands = {
        let slot = lock(&run.sockets_of(index)[socket]);
        match slot.as_ref() {
            Some(handle) => handle.commands.clone(),
            None => return Ok(()),
        }
    };
    let (tx, rx) = oneshot::channel();
    if commands.send(Command::Reconnect(tx)).await.is_err() {
        return Ok(());
    }
    let Ok(outcome) = rx.await else {
        // The socket was closed for good meanwhile (the run is ending).
        return Ok(());
    };
    record_connect(user, run.config.scenario.user_stream, &outcome).await;
    if !outcome.ok {
        return Err(custom(format!(
            "websocket reconnect failed: {}",
            outcome.error.unwrap_or_default()
        )));
    }
    // Catch up on what was said while away.
    history(&run, user, &conv_id, &account.token).await
}
