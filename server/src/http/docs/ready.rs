//! The readiness probe (`/ready`): the process is up and the store answers a ping;
//! in a cluster, whether Redis answers too (which never makes the node unready).

use std::rc::Rc;

use http::StatusCode;

use crate::context::ShardContext;
use crate::http::dto::Readiness;
use crate::http::reply::{json, Reply};

/// Readiness: the process is up and the store answers a ping.
///
/// Unlike `/health`, this fails while the store is down, so a load balancer stops
/// routing here instead of every request failing with 503. In a cluster it also says
/// whether Redis is reachable; without it the node still serves its own connections
/// (`redis: degraded`, 200).
#[utoipa::path(
    get,
    path = "/ready",
    tag = "health",
    responses(
        (status = 200, description = "Ready: the store answers", body = Readiness,
            example = json!({"status": "ok", "store": "ok", "redis": "ok"})),
        (status = 503, description = "Not ready: the store does not answer", body = Readiness,
            example = json!({"status": "unavailable", "store": "unavailable"})),
    )
)]
pub async fn ready(shard: &Rc<ShardContext>) -> Reply {
    let redis = shard
        .app
        .cluster
        .as_ref()
        .map(|c| if c.is_healthy() { "ok" } else { "degraded" });
    match shard.app.db.call(|s| async move { s.ping().await }).await {
        Ok(()) => Ok(json(
            StatusCode::OK,
            &Readiness {
                status: "ok",
                store: "ok",
                redis,
            },
        )),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: store ping failed");
            let body = Readiness {
                status: "unavailable",
                store: "unavailable",
                redis,
            };
            Ok(json(StatusCode::SERVICE_UNAVAILABLE, &body))
        }
    }
}
