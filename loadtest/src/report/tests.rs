//! The verdict and the text report, on made-up figures.

use hdrhistogram::Histogram;

use super::*;
use crate::markers::{Comparison, MarkerCheck};

/// A healthy run's report, everything read back.
fn healthy() -> Report {
    let tally = Tally {
        sent: 10,
        acked: 10,
        expected: 90,
        delivered_expected: 90,
        ..Tally::default()
    };
    Report {
        mode: "steady",
        target: Target {
            nodes: 1,
            transport: Transport {
                scheme: "plain",
                trust: String::new(),
            },
            store: "embedded store, temporary directory".into(),
            url: "http://127.0.0.1:1".into(),
            local_server: false,
            server_binary: None,
            server_log: None,
        },
        workload: Workload {
            users: 10,
            conversations: 1,
            group_size: 10,
            largest_group: 10,
            conversations_per_user: 1,
            socket_kind: "conversation",
            sockets_per_user: 1,
            sockets: 10,
            message_rate_per_user: 1.0,
            typing_ratio: 0.0,
            message_bytes: 120,
            think_time_s: 1.0,
        },
        setup: Setup {
            seconds: 1.0,
            users_joined: 10,
            users_failed: 0,
            all_joined: true,
        },
        measured: Measured {
            seconds: 1.0,
            messages_sent: 10,
            messages_per_s: 10.0,
            ack: Percentiles::default(),
            delivery: Percentiles::default(),
            server_cost: None,
        },
        correctness: Correctness {
            tally,
            duplicate_deliveries: 0,
            duplicate_acks: 0,
            reordered: 0,
            misrouted: 0,
            foreign: 0,
            retried_sends: 2,
            answered_with_original: 1,
        },
        streams: Streams {
            resumed_events: 40,
            resyncs: 1,
            gaps: 0,
            duplicates: 0,
            unplaced: 0,
        },
        sockets: Sockets {
            connects: 12,
            connect_failures: 0,
            connect_errors: BTreeMap::new(),
            reconnects: 2,
            dropped: 0,
            drop_reasons: BTreeMap::new(),
            join_timeouts: 0,
            source_addresses: Vec::new(),
        },
        events: Events {
            typing_sent: 0,
            typing_received: 0,
            system_received: 0,
            history_reads: 0,
            errors: BTreeMap::new(),
        },
        persistence: Persistence {
            conversations: 1,
            conversations_read: 1,
            history_messages: 10,
            acknowledged: 10,
            found: 10,
            complete: true,
            ..Persistence::default()
        },
        capacity: None,
        server: None,
        harness: Harness {
            usage: None,
            open_files: FdLimit {
                before: 1024,
                after: 1024,
                hard: 1024,
                needed: 100,
                problem: None,
            },
        },
        rest: Vec::new(),
        scrapes: None,
        room: None,
        hostile: None,
        user_streams: None,
        aborted: None,
        verdict: Verdict {
            ok: false,
            lost: 0,
            problems: Vec::new(),
        },
    }
}

#[test]
fn resumes_resyncs_and_retries_pass() {
    let r = healthy();
    let v = verdict(&r);
    assert!(v.ok, "{:?}", v.problems);
    let text = render(&Report { verdict: v, ..r });
    assert!(
        text.contains(" Streams: resumed events 40, resyncs 1, gaps 0, duplicates 0, unplaced 0\n"),
        "{text}"
    );
    assert!(
        text.contains(" Retried sends (same client_id): 2, answered with the original 1\n"),
        "{text}"
    );
}

#[test]
fn stream_gaps_duplicates_and_unplaced_events_fail() {
    for (streams, problem) in [
        (
            Streams {
                gaps: 3,
                ..healthy().streams
            },
            "3 stream positions never received (gaps)",
        ),
        (
            Streams {
                duplicates: 1,
                ..healthy().streams
            },
            "1 stream positions received twice",
        ),
        (
            Streams {
                unplaced: 2,
                ..healthy().streams
            },
            "2 stream events without a place",
        ),
    ] {
        let v = verdict(&Report {
            streams,
            ..healthy()
        });
        assert!(!v.ok);
        assert_eq!(v.problems, vec![problem.to_string()]);
    }
}

#[test]
fn percentiles_in_ms() {
    let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("bounds");
    for us in 1..=1000u64 {
        h.record(us * 1000).expect("in range");
    }
    let p = Percentiles::of(&h, 10.0);
    assert_eq!(p.count, 1000);
    assert!((p.per_second - 100.0).abs() < 1e-9);
    assert!((p.p50_ms - 500.0).abs() < 1.0, "{p:?}");
    assert!((p.p99_ms - 990.0).abs() < 2.0, "{p:?}");
    assert!((p.max_ms - 1000.0).abs() < 1.0, "{p:?}");
    assert_eq!(
        Percentiles::of(&Histogram::new(3).expect("h"), 1.0).count,
        0
    );
}

#[test]
fn transport_and_scrapes_are_stated_and_failed_scrapes_are_not_fatal() {
    let plain = render(&healthy());
    assert!(
        plain.contains(" Transport: plain (ws:// and http://)\n"),
        "{plain}"
    );
    assert!(!plain.contains("Metrics scrapes"), "{plain}");
    let mut r = healthy();
    r.target.transport = Transport {
        scheme: "tls",
        trust: "the certificate generated for the run".into(),
    };
    r.scrapes = Some(crate::scrape::Scrapes {
        interval_s: 1.0,
        nodes: 1,
        done: 30,
        failed: 1,
        failures: [("timed out".to_string(), 1)].into_iter().collect(),
        mean_ms: 2.5,
        max_ms: 9.0,
        mean_bytes: 12_345.4,
    });
    let v = verdict(&r);
    assert!(v.ok, "{:?}", v.problems);
    let text = render(&Report { verdict: v, ..r });
    assert!(
        text.contains(
            " Transport: TLS (wss:// and https://), trusting the certificate generated for the run\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            " Metrics scrapes: 30 done every 1 s over 1 node during the measured time, mean 2.50 ms, max 9.00 ms, 12,345 bytes per scrape; failed 1 (timed out x1)\n"
        ),
        "{text}"
    );
}

#[test]
fn the_socket_kind_is_stated() {
    let text = render(&healthy());
    assert!(
        text.contains(" Users: 10 in 1 conversations of 10 (largest 10), 1 per user, 10 sockets (1 per user, one per conversation)\n"),
        "{text}"
    );
    let mut r = healthy();
    r.workload.socket_kind = "user stream";
    r.workload.conversations_per_user = 5;
    let text = render(&r);
    assert!(
        text.contains(
            ", 5 per user, 10 sockets (one user stream per user, carrying all its conversations)\n"
        ),
        "{text}"
    );
}

#[test]
fn marker_mismatches_fail_and_unsettled_pairs_do_not() {
    let check = MarkerCheck {
        pairs: 50,
        unread: Comparison {
            checked: 48,
            mismatches: 0,
            not_settled: 2,
        },
        markers: Comparison {
            checked: 50,
            mismatches: 0,
            not_settled: 0,
        },
        failed: 0,
        examples: Vec::new(),
    };
    let streams = |check: MarkerCheck| UserStreams {
        streams: 10,
        conversations_per_stream: 5,
        check: Some(check),
    };
    let r = Report {
        user_streams: Some(streams(check.clone())),
        ..healthy()
    };
    let v = verdict(&r);
    assert!(v.ok, "{:?}", v.problems);
    let text = render(&Report { verdict: v, ..r });
    assert!(
        text.contains(
            " === USER STREAMS: 10 users, one socket each carrying 5 conversations ===\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(" Unread counts (REST) against the messages of others each user saw: 48 checked, 0 mismatches, 2 not settled\n"),
        "{text}"
    );
    let wrong = MarkerCheck {
        unread: Comparison {
            mismatches: 3,
            ..check.unread
        },
        markers: Comparison {
            mismatches: 1,
            ..check.markers
        },
        failed: 2,
        ..check
    };
    let v = verdict(&Report {
        user_streams: Some(streams(wrong)),
        ..healthy()
    });
    assert!(!v.ok);
    assert_eq!(
        v.problems,
        vec![
            "3 unread counts that differ from the messages of others the user saw".to_string(),
            "1 read markers not moved as asked (the read echo, or last_read_seq and unread_count after it)".to_string(),
            "2 (user, conversation) pairs whose unread count and marker could not be checked".to_string(),
        ]
    );
}
