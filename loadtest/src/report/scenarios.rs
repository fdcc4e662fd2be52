//! The report's sections for the scenarios: the big room (`--room-size`: its storms,
//! its members' own `joined` events, the server's closes, its deliveries and their
//! cost) and the hostile clients (`--hostile`: what each kind got, beside the normal
//! users' figures). It assembles and renders those sections and names the room's
//! checks for the verdict; what hostile clients got is never a problem.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use serde::Serialize;

use super::{Measured, Report};
use crate::console::thousands;
use crate::driver::Driven;
use crate::hostile::HostileReport;
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
