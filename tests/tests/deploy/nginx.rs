//! nginx.conf: its WebSocket settings, and nginx for real in front of a two-node
//! cluster.

use super::*;

/// The WebSocket location's timeouts in nginx.conf.
fn ws_timeouts(conf: &str) -> anyhow::Result<Vec<f64>> {
    let at = conf
        .find("location /api/chat/ws/")
        .context("no WebSocket location")?;
    let block = &conf[at..];
    let block = &block[..block.find('}').context("unclosed location")?];
    block
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("proxy_read_timeout") || l.starts_with("proxy_send_timeout"))
        .map(|l| {
            let value = l.split_whitespace().nth(1).unwrap_or_default();
            duration_seconds(value.trim_end_matches(';'))
        })
        .collect()
}

#[test]
fn nginx_conf_proxies_websockets_and_outlasts_the_ping() -> anyhow::Result<()> {
    let conf = read(&deploy("nginx.conf"))?;
    for needed in [
        "events {",
        "http {",
        "upstream chat {",
        "map $http_upgrade $connection_upgrade",
        "proxy_http_version 1.1;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "proxy_set_header X-Real-IP $remote_addr;",
        "proxy_set_header X-Request-Id",
        "proxy_set_header Host $host;",
        "proxy_buffering off;",
        "worker_rlimit_nofile",
        "worker_connections",
    ] {
        ensure!(conf.contains(needed), "nginx.conf lacks {needed:?}");
    }
    let help = server_help()?;
    let ping = default_seconds(&help, "--ws-ping-interval")?;
    let timeouts = ws_timeouts(&conf)?;
    ensure!(
        timeouts.len() == 2,
        "the WebSocket location sets {timeouts:?}"
    );
    for t in timeouts {
        ensure!(
            t >= 3.0 * ping,
            "a WebSocket timeout of {t} s is too close to the server's {ping} s ping"
        );
    }
    // The values a deployment (and the test below) rewrites are each written once
    // (the comment at the top names them too).
    let directives: String = conf
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    for (placeholder, times) in [
        ("node1:8000", 1),
        ("node2:8000", 1),
        ("listen 8080;", 1),
        ("error_log /dev/stderr", 1),
        ("access_log /dev/stdout", 1),
    ] {
        ensure!(
            directives.matches(placeholder).count() == times,
            "nginx.conf has {placeholder:?} {} times",
            directives.matches(placeholder).count()
        );
    }
    Ok(())
}

/// deploy/nginx.conf made runnable here: the nodes' addresses, a free port, nginx's own
/// directory for every file it writes, and `ws_timeout` for the WebSocket timeouts.
fn render_nginx(
    template: &str,
    nodes: [&str; 2],
    dir: &Path,
    port: u16,
    ws_timeout: u32,
) -> String {
    let dir = format!("{}/", dir.display());
    template
        .replace("/tmp/", &dir)
        .replace("/dev/stderr", &format!("{dir}{ERROR_LOG}"))
        .replace("/dev/stdout", &format!("{dir}{ACCESS_LOG}"))
        .replace("node1:8000", nodes[0])
        .replace("node2:8000", nodes[1])
        .replace("listen 8080;", &format!("listen 127.0.0.1:{port};"))
        .replace(
            "proxy_read_timeout 75s;",
            &format!("proxy_read_timeout {ws_timeout}s;"),
        )
        .replace(
            "proxy_send_timeout 75s;",
            &format!("proxy_send_timeout {ws_timeout}s;"),
        )
}

/// A WebSocket opened with `X-Request-Id: request_id`; the id the response carried.
async fn ws_connect(url: &str, request_id: &str) -> anyhow::Result<(WsClient, String)> {
    let mut request = url.into_client_request()?;
    request
        .headers_mut()
        .insert("x-request-id", request_id.parse()?);
    let (ws, headers) = WsClient::connect_request(request, None).await?;
    let echoed = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Ok((ws, echoed))
}

async fn ws_message(ws: &mut WsClient, content: &str, from: &Session) -> anyhow::Result<Value> {
    ws.wait_for(&format!("message {content:?}"), |v| {
        v["type"] == "message" && v["content"] == content && v["sender_id"] == from.user_id
    })
    .await
}

async fn ws_send(ws: &mut WsClient, content: &str) -> anyhow::Result<()> {
    ws.send_json(&json!({"type": "message", "content": content, "client_id": unique_name("c")}))
        .await
}

/// Which node logged the request `request_id` (the nodes log every request's id at
/// debug level).
async fn node_of(cluster: &TestCluster, request_id: &str) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for i in 0..2 {
            if cluster.node(i).stderr_contents().contains(request_id) {
                return Ok(i);
            }
        }
        ensure!(
            Instant::now() < deadline,
            "no node logged request {request_id}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn header(reply: &Reply, name: &str) -> String {
    reply
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// deploy/nginx.conf for real, in front of two nodes of one cluster: two users chat
/// through it from different nodes, REST works through it, request ids travel both
/// ways, client addresses reach the nodes through X-Forwarded-For, and a WebSocket left
/// idle far longer than nginx's timeout stays open because the server's pings flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_in_front_of_two_nodes() {
    // nginx's WebSocket timeout here, and the server's ping interval: pings at a
    // quarter of the timeout keep an idle socket open through nginx.
    const WS_TIMEOUT: u32 = 2;
    let mut opts = ClusterOptions::new(2);
    opts.extra_args = [
        "--ws-ping-interval",
        "0.5",
        "--trusted-proxies",
        "127.0.0.1",
    ]
    .map(String::from)
    .to_vec();
    opts.env = vec![("RUST_LOG".into(), "info,chat_server=debug".into())];
    let cluster = TestCluster::start(opts)
        .await
        .unwrap_or_else(|e| panic!("could not start the cluster: {e:#}"));
    let template = read(&deploy("nginx.conf")).unwrap_or_else(|e| panic!("{e:#}"));
    let nodes: Vec<String> = (0..2)
        .map(|i| {
            cluster
                .node(i)
                .base_url()
                .trim_start_matches("http://")
                .to_string()
        })
        .collect();
    let nginx = Nginx::start(|dir, port| {
        render_nginx(&template, [&nodes[0], &nodes[1]], dir, port, WS_TIMEOUT)
    })
    .await
    .unwrap_or_else(|e| panic!("could not start nginx: {e:#}"));
    let result = through_nginx(&cluster, &nginx, WS_TIMEOUT).await;
    let result = result.with_context(|| {
        format!(
            "--- nginx error log ---\n{}\n--- nginx access log ---\n{}",
            nginx.error_log(),
            nginx.access_log()
        )
    });
    drop(nginx);
    cluster.finish(result);
}

async fn through_nginx(
    cluster: &TestCluster,
    nginx: &Nginx,
    ws_timeout: u32,
) -> anyhow::Result<()> {
    let api = Api::new(&nginx.base_url());
    api.get("/health", None).await?.expect_status(200)?;
    let ready = api.get("/ready", None).await?.expect(200)?;
    ensure!(ready["redis"] == "ok", "/ready through nginx: {ready}");
    ensure!(
        api.get("/metrics", None).await?.status == 404,
        "nginx serves /metrics to the public"
    );

    // REST through nginx: users, a conversation.
    let (users, conv) = tests::realtime::group(&api, &["ngxa", "ngxb"]).await?;
    let (a, b) = (&users[0], &users[1]);

    // A WebSocket through nginx carries its request id to a node and back.
    let url = |who: &Session| tests::ws::ws_url(&nginx.ws_base_url(), &conv, &who.token);
    let rid_a = format!("deploy-ws-{}", uuid::Uuid::new_v4().simple());
    let (mut ws_a, echoed) = ws_connect(&url(a), &rid_a).await?;
    ensure!(
        echoed == rid_a,
        "the upgrade echoed {echoed:?}, not {rid_a}"
    );
    let node_a = node_of(cluster, &rid_a).await?;
    ws_a.wait_for("a's joined", |v| tests::realtime::is_joined(v, a))
        .await?;

    // b on the other node: new sockets go to the node with fewer open.
    let mut b_socket = None;
    for _ in 0..8 {
        let rid = format!("deploy-ws-{}", uuid::Uuid::new_v4().simple());
        let (ws, _) = ws_connect(&url(b), &rid).await?;
        if node_of(cluster, &rid).await? != node_a {
            b_socket = Some(ws);
            break;
        }
        ws.close().await?;
    }
    let mut ws_b = b_socket.context("nginx never sent b to the other node")?;
    ws_b.wait_for("b's joined", |v| tests::realtime::is_joined(v, b))
        .await?;

    // They talk across the nodes, through nginx.
    ws_send(&mut ws_a, "hello from a").await?;
    ws_message(&mut ws_a, "hello from a", a).await?;
    ws_message(&mut ws_b, "hello from a", a).await?;
    ws_send(&mut ws_b, "hello from b").await?;
    ws_message(&mut ws_b, "hello from b", b).await?;
    ws_message(&mut ws_a, "hello from b", b).await?;

    // Idle for three times nginx's timeout: the server's pings keep both open.
    tokio::time::sleep(Duration::from_secs(3 * u64::from(ws_timeout))).await;
    ws_send(&mut ws_a, "still there?").await?;
    ws_message(&mut ws_b, "still there?", a).await?;
    ws_send(&mut ws_b, "still here").await?;
    ws_message(&mut ws_a, "still here", b).await?;

    let history = api.history_list(a, &conv, "limit=10").await?;
    let contents: Vec<&str> = history
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    ensure!(
        contents == ["hello from a", "hello from b", "still there?", "still here"],
        "history through nginx: {contents:?}"
    );

    // A client's request id is passed on and echoed; without one, nginx makes one,
    // which the node logs and echoes and nginx's access log records.
    let rid = format!("deploy-rest-{}", uuid::Uuid::new_v4().simple());
    let reply = api
        .send(
            "GET /health with an id".into(),
            api.http()
                .get(api.url("/health"))
                .header("X-Request-Id", &rid),
        )
        .await?;
    ensure!(
        header(&reply, "x-request-id") == rid,
        "echoed {:?}",
        header(&reply, "x-request-id")
    );
    node_of(cluster, &rid).await?;
    let reply = api.get("/health", None).await?;
    let made = header(&reply, "x-request-id");
    ensure!(
        made.len() == 32 && made.chars().all(|c| c.is_ascii_hexdigit()),
        "no request id made by nginx: {made:?}"
    );
    node_of(cluster, &made).await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !nginx.access_log().contains(&format!("rid={made}")) {
        ensure!(
            Instant::now() < deadline,
            "nginx's access log lacks rid={made}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Client addresses: nginx appends its peer to X-Forwarded-For and the nodes trust
    // nginx, so login throttling counts per client, not per proxy. Throttling is per
    // node: a client is blocked after 10 failures on some node within 2 x 10 + 1.
    let c = api.new_user("ngxc").await?;
    let login_from = |from: &str, password: &str| {
        api.http()
            .post(api.url("/api/auth/login"))
            .header("X-Forwarded-For", from)
            .json(&json!({"username": c.username, "password": password}))
    };
    let mut throttled_after = None;
    for attempt in 1..=21 {
        let reply = api
            .send(
                "failed login".into(),
                login_from("203.0.113.7", "wrong password"),
            )
            .await?;
        match reply.status.as_u16() {
            401 => {}
            429 => {
                throttled_after = Some(attempt - 1);
                break;
            }
            other => bail!("failed login answered {other}: {}", reply.text()),
        }
    }
    let failures = throttled_after.context("21 failed logins through nginx, never throttled")?;
    ensure!(failures >= 10, "throttled after {failures} failures");
    let reply = api
        .send(
            "login from elsewhere".into(),
            login_from("198.51.100.9", PASSWORD),
        )
        .await?;
    ensure!(
        reply.status == 200,
        "another client address was throttled too (X-Forwarded-For not believed?): {} {}",
        reply.status,
        reply.text()
    );

    ws_a.close().await?;
    ws_b.close().await?;
    Ok(())
}
