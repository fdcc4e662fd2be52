//! The self-description of the server: the OpenAPI document (`/openapi.json`), the
//! Swagger UI (`/docs`) and ReDoc (`/redoc`) pages that render it, and the readiness
//! probe (`/ready`). Every byte these routes serve is built into the binary, so the
//! documentation renders offline; this module never fetches anything and never
//! touches application state beyond the store ping of `/ready`.

mod ready;
mod spec;
mod ui;

use hyper::Response;

use super::reply::{Body, Reply};
pub use ready::ready;
use ui::Asset;

/// `GET /openapi.json`.
pub fn openapi() -> Response<Body> {
    Asset {
        body: spec::json(),
        content_type: "application/json".into(),
        revalidate: true,
    }
    .into_response()
}

/// `GET /docs` and `GET /docs/<rest>`: Swagger UI; `rest` is "" for the page itself.
pub fn swagger(rest: &str) -> Reply {
    ui::swagger(rest).map(Asset::into_response)
}

/// `GET /redoc` and `GET /redoc/<rest>`: ReDoc; `rest` is "" for the page itself.
pub fn redoc(rest: &str) -> Reply {
    ui::redoc(rest).map(Asset::into_response)
}
