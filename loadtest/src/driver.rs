//! The run over time, next to Goose: wait until every user has joined (in a big room:
//! is in the room, then run the join storm and maybe the reconnect storm), warm up
//! (hostile clients start beside the users then, when asked for),
//! measure (one steady window, or the capacity steps), stop the chat and end Goose's
//! run; afterwards drain the last acknowledgements and deliveries and close every
//! socket.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::capacity::{self, CapacityResult};
use crate::console::{say, thousands};
use crate::hostile::{self, HostileReport};
use crate::state::{lock, Run, Stage};
use crate::storm::{self, Storm};
use crate::ws::Command;

/// How the timed part of the run went.
pub struct Driven {
    pub setup_seconds: f64,
    pub all_joined: bool,
    pub aborted: Option<String>,
    pub capacity: Option<CapacityResult>,
    /// `--room-size`: the join storm, and the reconnect storm when asked for.
    pub storms: Vec<Storm>,
    /// `--hostile`: what the hostile clients got.
    pub hostile: Option<HostileReport>,
}

fn finish(run: &Run, reason: &str) {
    run.end_chat();
    run.set_stage(Stage::Stopping);
    goose::trigger_killswitch(reason);
}

pub async fn drive(run: Arc<Run>) -> Driven {
    let started = Instant::now();
    let users = run.plan.users();
    say(&format!(
        "setting up {} users in {} conversations ({} sockets{}); usernames {}-0 .. {}-{} \
         (--user-prefix {} logs them in again)",
        thousands(users as u64),
        thousands(run.plan.conversations() as u64),
        thousands(run.config.connections() as u64),
        if run.config.scenario.user_stream {
            ": one user stream per user"
        } else {
            ""
        },
        run.user_prefix,
        run.user_prefix,
        users - 1,
        run.user_prefix
    ));
    let room = run.config.scenario.room();
    let mut storms = Vec::new();
    let mut aborted = set_up(&run, started).await;
    if aborted.is_none() && room {
        let storm = storm::join_storm(&run).await;
        aborted.clone_from(&storm.incomplete);
        storms.push(storm);
        if aborted.is_none() && run.config.scenario.reconnect_storm {
            let storm = storm::reconnect_storm(&run).await;
            aborted.clone_from(&storm.incomplete);
            storms.push(storm);
        }
    }
    let setup_seconds = started.elapsed().as_secs_f64();
    if let Some(why) = aborted {
        finish(&run, &why);
        return Driven {
            setup_seconds,
            all_joined: false,
            aborted: Some(why),
            capacity: None,
            storms,
            hostile: None,
        };
    }
    say(&format!(
        "all {} users joined in {setup_seconds:.1} s ({} failed); chatting",
        thousands(users as u64),
        run.counters.users_failed.load(Ordering::Relaxed)
    ));
    run.set_stage(Stage::Chat);

    let config = &run.config;
    let base_rate = match (config.capacity, config.start_rate) {
        (true, Some(total)) => total / users as f64,
        _ => config.message_rate,
    };
    run.begin_window(0, base_rate);
    let mut aborted = None;
    let mut capacity = None;
    // Hostile clients act beside the normal users from the warm-up to the end.
    let hostile =
        (config.scenario.hostile > 0).then(|| tokio::spawn(hostile::run(Arc::clone(&run))));
    if run.pause(config.warmup()).await {
        if config.capacity {
            capacity = Some(capacity::search(&run).await);
        } else {
            let run_time = config.run_time().unwrap_or(crate::config::DEFAULT_RUN_TIME);
            run.begin_window(1, base_rate);
            if !steady(&run, run_time).await {
                aborted = Some("stopped".into());
            }
        }
    } else {
        aborted = Some("stopped during warm-up".into());
    }
    finish(&run, "measurement finished");
    let hostile = match hostile {
        Some(task) => task.await.ok(),
        None => None,
    };
    Driven {
        setup_seconds,
        all_joined: true,
        aborted,
        capacity,
        storms,
        hostile,
    }
}

/// Waits until every user is set up: joined and connected, or in a big room set up
/// over REST and waiting for the join storm. Says why when it gave up.
async fn set_up(run: &Run, started: Instant) -> Option<String> {
    let users = run.plan.users();
    let deadline = started + run.config.setup_timeout();
    let mut next_note = Instant::now() + Duration::from_secs(5);
    let c = &run.counters;
    let room = run.config.scenario.room();
    loop {
        let failed = c.users_failed.load(Ordering::Relaxed);
        let ready = if room {
            c.users_prepared.load(Ordering::Relaxed) + failed
        } else {
            c.users_ready.load(Ordering::Relaxed)
        };
        if ready >= users {
            return None;
        }
        if run.stopping() {
            return Some("stopped during setup".into());
        }
        if Instant::now() >= deadline {
            let why = format!(
                "setup timed out: {ready} of {users} users joined within {:.0} s (--setup-timeout)",
                run.config.setup_timeout
            );
            say(&why);
            return Some(why);
        }
        if Instant::now() >= next_note {
            say(&format!(
                "setup: {} of {} users {} ({failed} failed), {:.0} s",
                thousands(ready as u64),
                thousands(users as u64),
                if room { "in the room" } else { "joined" },
                started.elapsed().as_secs_f64()
            ));
            next_note += Duration::from_secs(5);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The measured window, with a progress line every 5 s.
async fn steady(run: &Run, run_time: Duration) -> bool {
    let started = Instant::now();
    let c = &run.counters;
    let (mut sent0, mut delivered0) = (
        c.sent.load(Ordering::Relaxed),
        c.delivered.load(Ordering::Relaxed),
    );
    let mut last = Instant::now();
    while started.elapsed() < run_time {
        let left = run_time.saturating_sub(started.elapsed());
        if !run.pause(left.min(Duration::from_secs(5))).await {
            return false;
        }
        let (sent, delivered) = (
            c.sent.load(Ordering::Relaxed),
            c.delivered.load(Ordering::Relaxed),
        );
        let dt = last.elapsed().as_secs_f64().max(0.001);
        say(&format!(
            "{:>4.0} s: {:.0} messages/s, {} deliveries/s, {} in flight, {} errors, {} dropped sockets",
            started.elapsed().as_secs_f64(),
            (sent - sent0) as f64 / dt,
            thousands(((delivered - delivered0) as f64 / dt).round() as u64),
            c.outstanding.load(Ordering::Relaxed),
            lock(&c.errors).values().sum::<u64>(),
            c.drops.load(Ordering::Relaxed)
        ));
        (sent0, delivered0, last) = (sent, delivered, Instant::now());
    }
    true
}

/// After the chat stopped: waits (up to `--drain-timeout`) for the acknowledgements in
/// flight, then for deliveries to stop arriving.
pub async fn drain(run: &Run) {
    let deadline = Instant::now() + run.config.drain_timeout();
    let c = &run.counters;
    while c.outstanding.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let quiet = Duration::from_millis(750);
    let mut last = c.delivered.load(Ordering::Relaxed);
    let mut since = Instant::now();
    while Instant::now() < deadline && since.elapsed() < quiet {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = c.delivered.load(Ordering::Relaxed);
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
    let left = c.outstanding.load(Ordering::Relaxed);
    if left > 0 {
        say(&format!(
            "{left} messages still unacknowledged after {:.0} s",
            run.config.drain_timeout
        ));
    }
}

/// Closes every socket for good and waits for the tasks (at most ~20 s).
pub async fn close_all(run: &Run) {
    let mut waits = Vec::new();
    let mut tasks = Vec::new();
    for slot in &run.sockets {
        let Some(handle) = lock(slot).take() else {
            continue;
        };
        let (tx, rx) = oneshot::channel();
        if handle
            .commands
            .try_send(Command::Close {
                done: Some(tx),
                final_close: true,
            })
            .is_ok()
        {
            waits.push(rx);
        }
        tasks.push(handle.task);
    }
    let all = async {
        for rx in waits {
            let _ = rx.await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(20), all)
        .await
        .is_err()
    {
        say("some sockets did not close within 20 s; abandoning them");
    }
    for task in tasks {
        task.abort();
    }
}
