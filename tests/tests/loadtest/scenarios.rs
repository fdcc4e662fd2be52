//! The harness's scenarios, briefly, against a node it starts itself: a big room (30
//! members above a lowered presence-list limit, a join storm and a reconnect storm),
//! hostile clients beside normal users, and user streams (one socket per user for five
//! conversations, with the read markers checked at the end). Correctness and the
//! presence of each check only, never timing: those numbers belong in BENCHMARKS.md.

use loadtest::{Config, Report};
use tests::prelude::*;

use crate::ONE_AT_A_TIME;

/// A run against a local node of the current build, with `args` after the defaults.
async fn local_run(args: &[&str]) -> anyhow::Result<(Report, String)> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let binary = testkit::server_binary(testkit::Profile::Current)?;
    let binary = binary.display().to_string();
    let base = [
        "loadtest",
        "--server-bin",
        &binary,
        "--no-build",
        "--warmup",
        "1",
    ];
    let config = Config::try_from_iter(base.iter().chain(args))?;
    let report = loadtest::run(config).await?;
    let text = loadtest::report::render(&report);
    Ok((report, text))
}

/// 30 members in one room, above a presence-list limit of 10 (so joins are summed
/// up): every member sees its own join in both storms, nothing is closed, every
/// delivery is made and every acknowledged message is in history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_big_room_with_storms() {
    let result = async {
        let (report, text) = local_run(&[
            "--room-size",
            "30",
            "--reconnect-storm",
            "--run-time",
            "3s",
            "--message-rate",
            "1",
            "--think-time",
            "60",
            "--server-arg=--presence-list-limit=10",
        ])
        .await?;
        ensure!(
            report.verdict.ok,
            "verdict: {:?}\n{text}",
            report.verdict.problems
        );
        let room = report.room.as_ref().context("no room in the report")?;
        ensure!(room.members == 30 && room.own_joined == 30, "{text}");
        ensure!(room.closed_1013 == 0, "{text}");
        ensure!(room.storms.len() == 2, "{text}");
        for storm in &room.storms {
            ensure!(
                storm.joined == 30 && storm.failed == 0 && storm.incomplete.is_none(),
                "{} storm: {storm:?}\n{text}",
                storm.kind
            );
            ensure!(storm.bytes_received > 0, "{text}");
        }
        ensure!(room.deliveries > 0, "nothing delivered\n{text}");
        ensure!(report.persistence.lost == 0, "{text}");
        ensure!(text.contains(" === BIG ROOM: 30 members"), "{text}");
        ensure!(
            text.contains(" join storm: 30 of 30 sockets joined"),
            "{text}"
        );
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result {
        panic!("{e:#}");
    }
}

/// One hostile client of each kind beside 30 normal users: the normal users lose
/// nothing, and every kind's outcome is reported (the flood is rate-limited, the
/// oversized frame closed), none of them failing the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_hostile_clients_beside_normal_users() {
    let result = async {
        let (report, text) = local_run(&[
            "--users",
            "30",
            "--hostile",
            "1",
            "--run-time",
            "4s",
            "--message-rate",
            "1",
            "--think-time",
            "3",
        ])
        .await?;
        ensure!(
            report.verdict.ok,
            "verdict: {:?}\n{text}",
            report.verdict.problems
        );
        ensure!(report.persistence.lost == 0, "{text}");
        let hostile = report.hostile.as_ref().context("no hostile section")?;
        ensure!(hostile.setup_problems.is_empty(), "{text}");
        ensure!(hostile.kinds.len() == 7, "{text}");
        for kind in &hostile.kinds {
            ensure!(
                !kind.outcomes.is_empty(),
                "{}: no outcome\n{text}",
                kind.kind
            );
        }
        let outcome = |kind: &str, what: &str| {
            hostile
                .kinds
                .iter()
                .filter(|k| k.kind == kind)
                .any(|k| k.outcomes.keys().any(|o| o.contains(what)))
        };
        ensure!(outcome("flood", "Rate limit exceeded"), "{text}");
        ensure!(outcome("flood", "closed with 1008"), "{text}");
        ensure!(outcome("oversized frame", "closed with 1009"), "{text}");
        ensure!(
            text.contains(" === HOSTILE CLIENTS: 1 of each kind"),
            "{text}"
        );
        ensure!(
            text.contains(" Normal users beside them: lost = 0"),
            "{text}"
        );
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result {
        panic!("{e:#}");
    }
}

/// 20 users, each in five conversations over one user stream, reconnecting now and
/// then: every conversation's positions once and in order across the resumes, every
/// delivery made once, every acknowledged message in history, and at the end every
/// unread count equals the messages of others its user saw, and every read marker
/// moves to the last position seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_user_streams_with_markers() {
    let result = async {
        let (report, text) = local_run(&[
            "--user-stream",
            "--conversations-per-user",
            "5",
            "--users",
            "20",
            "--group-size",
            "5",
            "--run-time",
            "3s",
            "--message-rate",
            "2",
            "--think-time",
            "1",
        ])
        .await?;
        ensure!(
            report.verdict.ok,
            "verdict: {:?}\n{text}",
            report.verdict.problems
        );
        let w = &report.workload;
        ensure!(
            w.socket_kind == "user stream" && w.sockets_per_user == 1 && w.sockets == 20,
            "{text}"
        );
        ensure!(report.persistence.lost == 0, "{text}");
        let t = &report.correctness.tally;
        ensure!(t.acked > 0 && t.delivered_expected > 0, "{text}");
        ensure!(t.missing == 0 && t.unacked == 0, "{text}");
        let c = &report.correctness;
        ensure!(
            c.duplicate_deliveries == 0 && c.reordered == 0 && c.misrouted == 0,
            "{text}"
        );
        let st = &report.streams;
        ensure!(
            st.gaps == 0 && st.duplicates == 0 && st.unplaced == 0,
            "{text}"
        );
        ensure!(report.sockets.reconnects > 0, "no stream resumed\n{text}");
        let streams = report.user_streams.as_ref().context("no user streams")?;
        let check = streams.check.as_ref().context("markers not checked")?;
        ensure!(check.pairs == 100 && check.failed == 0, "{text}");
        ensure!(
            check.unread.checked > 0 && check.unread.mismatches == 0,
            "{text}"
        );
        ensure!(
            check.markers.checked > 0 && check.markers.mismatches == 0,
            "{text}"
        );
        ensure!(
            text.contains(" === USER STREAMS: 20 users, one socket each carrying 5 conversations"),
            "{text}"
        );
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result {
        panic!("{e:#}");
    }
}
