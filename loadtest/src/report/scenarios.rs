//! The report's sections for the scenarios: the big room (`--room-size`: its storms,
//! its members' own `joined` events, the server's closes, its deliveries and their
//! cost), the hostile clients (`--hostile`: what each kind got, beside the normal
//! users' figures) and the user streams (`--user-stream`: the unread counts and read
//! markers checked at the end). It assembles and renders those sections and names the
//! room's and the markers' checks for the verdict; what hostile clients got is never
//! a problem.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use serde::Serialize;

use super::{Measured, Report};
use crate::console::thousands;
use crate::driver::Driven;
use crate::hostile::HostileReport;
use crate::markers::{Comparison, MarkerCheck};
use crate::state::{lock, DeliveryCost, Run};
use crate::storm::Storm;

/// The big room: one conversation of every user.
#[derive(Clone, Debug, Serialize)]
pub struct Room {
    pub members: usize,
    /// The join storm, then the reconnect storm when asked for.
    pub storms: Vec<Storm>,
    /// Members whose first connection received their own `joined` event.
    pub own_joined: u64,
    /// Sockets the server closed over the whole run, by close code.
    pub server_closes: BTreeMap<String, u64>,
    /// Of them, closed with 1013 (the server found them too slow).
    pub closed_1013: u64,
    /// Deliveries that had to be made and were (the whole run).
    pub deliveries: u64,
    pub delivery_p50_ms: f64,
    pub delivery_p99_ms: f64,
    /// The server's CPU per delivery over the measured time.
    pub server_cost: Option<DeliveryCost>,
}

/// The user streams: one socket per user for all its conversations.
#[derive(Clone, Debug, Serialize)]
pub struct UserStreams {
    /// Users, each with one user stream.
    pub streams: usize,
    /// Conversations each stream carries.
    pub conversations_per_stream: usize,
    /// The end-of-run check of unread counts and read markers; none when the run did
    /// not complete.
    pub check: Option<MarkerCheck>,
}

/// The user streams' section, when the run had them.
pub fn user_streams(run: &Run, check: Option<MarkerCheck>) -> Option<UserStreams> {
    run.config.scenario.user_stream.then(|| UserStreams {
        streams: run.plan.users(),
        conversations_per_stream: run.plan.layers(),
        check,
    })
}

/// The markers' checks, as problems for the verdict.
pub fn user_stream_problems(streams: &UserStreams) -> Vec<String> {
    let Some(check) = &streams.check else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    for (n, what) in [
        (
            check.unread.mismatches,
            "unread counts that differ from the messages of others the user saw",
        ),
        (
            check.markers.mismatches,
            "read markers not moved as asked (the read echo, or last_read_seq and unread_count after it)",
        ),
        (
            check.failed,
            "(user, conversation) pairs whose unread count and marker could not be checked",
        ),
    ] {
        if n > 0 {
            problems.push(format!("{} {what}", thousands(n)));
        }
    }
    problems
}

/// The room's section, when the run was one.
pub fn room(run: &Run, driven: &Driven, measured: &Measured, deliveries: u64) -> Option<Room> {
    run.config.scenario.room_size?;
    let server_closes: BTreeMap<String, u64> = lock(&run.counters.drop_reasons)
        .iter()
        .filter_map(|(reason, &n)| {
            reason
                .strip_prefix("server closed with ")
                .map(|code| (code.to_string(), n))
        })
        .collect();
    Some(Room {
        members: run.plan.users(),
        storms: driven.storms.clone(),
        own_joined: run.counters.first_joins.load(Ordering::Relaxed),
        closed_1013: server_closes.get("1013").copied().unwrap_or(0),
        server_closes,
        deliveries,
        delivery_p50_ms: measured.delivery.p50_ms,
        delivery_p99_ms: measured.delivery.p99_ms,
        server_cost: measured.server_cost,
    })
}

/// The room's checks, as problems for the verdict.
pub fn room_problems(room: &Room) -> Vec<String> {
    let mut problems = Vec::new();
    let members = room.members as u64;
    if room.own_joined < members {
        problems.push(format!(
            "{} of {} members never received their own joined event",
            thousands(members - room.own_joined),
            thousands(members)
        ));
    }
    if room.closed_1013 > 0 {
        problems.push(format!(
            "{} sockets of the room closed by the server with 1013",
            thousands(room.closed_1013)
        ));
    }
    for storm in &room.storms {
        if storm.failed > 0 {
            problems.push(format!(
                "{} of {} sockets did not join in the {} storm",
                thousands(storm.failed as u64),
                thousands(storm.sockets as u64),
                storm.kind
            ));
        }
    }
    problems
}

fn map_line(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "none".into();
    }
    map.iter()
        .map(|(k, v)| format!("{k} x{}", thousands(*v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The scenario sections of the text report.
pub fn render(s: &mut String, r: &Report) {
    if let Some(room) = &r.room {
        render_room(s, room);
    }
    if let Some(hostile) = &r.hostile {
        render_hostile(s, r, hostile);
    }
    if let Some(streams) = &r.user_streams {
        render_user_streams(s, streams);
    }
}

fn comparison(c: &Comparison) -> String {
    format!(
        "{} checked, {} mismatches, {} not settled",
        thousands(c.checked),
        thousands(c.mismatches),
        thousands(c.not_settled)
    )
}

fn render_user_streams(s: &mut String, streams: &UserStreams) {
    let _ = writeln!(
        s,
        "\n === USER STREAMS: {} users, one socket each carrying {} conversations ===",
        thousands(streams.streams as u64),
        streams.conversations_per_stream
    );
    let Some(check) = &streams.check else {
        let _ = writeln!(s, " Markers: not checked (the run did not complete)");
        return;
    };
    let _ = writeln!(
        s,
        " Unread counts (REST) against the messages of others each user saw: {}",
        comparison(&check.unread)
    );
    let _ = writeln!(
        s,
        " Read markers moved to the last position seen (echoed, then over REST): {}",
        comparison(&check.markers)
    );
    let _ = writeln!(
        s,
        " Of {} (user, conversation) pairs, not checked at all: {}",
        thousands(check.pairs),
        thousands(check.failed)
    );
    for example in &check.examples {
        let _ = writeln!(s, "   - {example}");
    }
}

fn render_room(s: &mut String, room: &Room) {
    let _ = writeln!(
        s,
        "\n === BIG ROOM: {} members in one conversation ===",
        thousands(room.members as u64)
    );
    for storm in &room.storms {
        let _ = writeln!(
            s,
            " {} storm: {} of {} sockets joined in {:.2} s (each: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms)",
            storm.kind,
            thousands(storm.joined as u64),
            thousands(storm.sockets as u64),
            storm.seconds,
            storm.join_p50_ms,
            storm.join_p99_ms,
            storm.join_max_ms
        );
        let _ = writeln!(
            s,
            "   received meanwhile: {} bytes in {} frames ({} bytes in {} frames until 3 s after); closes: {}{}",
            thousands(storm.bytes_received),
            thousands(storm.frames_received),
            thousands(storm.bytes_settled),
            thousands(storm.frames_settled),
            map_line(&storm.closes),
            storm
                .incomplete
                .as_ref()
                .map(|why| format!(" -- {why}"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            s,
            "   of those: {} frames with the member list ({} bytes), {} summaries",
            thousands(storm.listed_frames),
            thousands(storm.listed_bytes),
            thousands(storm.summary_frames),
        );
    }
    let _ = writeln!(
        s,
        " Own joined event: {} of {} members; closed by the server: {} (1013: {})",
        thousands(room.own_joined),
        thousands(room.members as u64),
        map_line(&room.server_closes),
        thousands(room.closed_1013)
    );
    let _ = writeln!(
        s,
        " Chat: {} deliveries made, delivery p50 {:.1} ms, p99 {:.1} ms, {}",
        thousands(room.deliveries),
        room.delivery_p50_ms,
        room.delivery_p99_ms,
        room.server_cost.map_or_else(
            || "server CPU per delivery not measured".to_string(),
            |c| format!("{:.2} us of server CPU per delivery", c.total_us)
        )
    );
}

fn render_hostile(s: &mut String, r: &Report, hostile: &HostileReport) {
    let _ = writeln!(
        s,
        "\n === HOSTILE CLIENTS: {} of each kind beside the normal users ===",
        hostile.clients_per_kind
    );
    for kind in &hostile.kinds {
        let _ = writeln!(
            s,
            " {} ({}): {} client{}, sent {}{}",
            kind.kind,
            kind.what,
            kind.clients,
            if kind.clients == 1 { "" } else { "s" },
            thousands(kind.sent),
            kind.slowest_answer_ms
                .map(|ms| format!(", slowest answer {ms:.0} ms"))
                .unwrap_or_default()
        );
        let _ = writeln!(s, "   got: {}", map_line(&kind.outcomes));
    }
    for problem in &hostile.setup_problems {
        let _ = writeln!(s, "   hostile setup: {problem}");
    }
    let _ = writeln!(
        s,
        " Normal users beside them: lost = {}, deliveries missing {}, delivery p99 {:.1} ms, verdict {}",
        r.verdict.lost,
        thousands(r.correctness.tally.missing),
        r.measured.delivery.p99_ms,
        if r.verdict.ok { "OK" } else { "PROBLEMS" }
    );
}
