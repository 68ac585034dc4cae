//! Mounts over HTTP (admins and the socket): list, mount a store directory
//! by name (`POST /v1/mounts/{name}` with `{"dir": "/absolute/path"}`),
//! unmount. A change is made, then recorded as a `cairn.mounts` event, so
//! it holds across restarts.

use axum::body::Body;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, Response, StatusCode};

use super::{ApiError, ApiResult, Params, Segment, State, Who, json_response, parse_json, read_body, to_json};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MountBody {
    dir: String,
}

/// `GET /v1/mounts`: the stores this server serves besides its own.
pub(crate) async fn list(AxumState(app): State, Who(principal): Who, params: Params) -> ApiResult<Response<Body>> {
    params.finish()?;
    app.service.check_admin(&principal)?;
    Ok(json_response(StatusCode::OK, to_json(&app.mounts.list()), None))
}

/// `POST /v1/mounts/{name}`: opens the store at `dir` and serves it on
/// `dir/cairn.sock`; 201 with the mount.
pub(crate) async fn mount(
    AxumState(app): State,
    Who(principal): Who,
    Segment(name): Segment,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response<Body>> {
    params.finish()?;
    app.service.check_admin(&principal)?;
    main_only(&app)?;
    crate::mounts::check_name(&name).map_err(|rule| ApiError::invalid("name", rule))?;
    let bytes = read_body(&app, &headers, body, "mount", 64 * 1024).await?;
    let given: MountBody = parse_json(&bytes, "{\"dir\": \"/absolute/path\"}")?;
    let dir = std::path::PathBuf::from(&given.dir);
    if !dir.is_absolute() {
        return Err(ApiError::invalid("dir", format!("{:?} is not an absolute path", given.dir)));
    }
    app.mounts
        .mount(&app.config, &name, dir.clone())
        .await
        .map_err(|error| ApiError::invalid("dir", format!("{error:#}")))?;
    let meta = serde_json::json!({ "op": "mount", "name": name, "dir": given.dir });
    if let Err(error) = app.service.record_mount(&principal, meta).await {
        app.mounts.unmount(&name).await;
        return Err(error.into());
    }
    let info = app.mounts.list().into_iter().find(|mount| mount.name == name);
    Ok(json_response(StatusCode::CREATED, to_json(&info), None))
}

/// `DELETE /v1/mounts/{name}`: stops serving it (its requests finish, its
/// processors stop, its store closes); 204.
pub(crate) async fn unmount(
    AxumState(app): State,
    Who(principal): Who,
    Segment(name): Segment,
    params: Params,
) -> ApiResult<Response<Body>> {
    params.finish()?;
    app.service.check_admin(&principal)?;
    main_only(&app)?;
    if app.mounts.has(&name).is_none() {
        return Err(ApiError::not_found("mount", &name));
    }
    app.service.record_mount(&principal, serde_json::json!({ "op": "unmount", "name": name })).await?;
    app.mounts.unmount(&name).await;
    Ok(super::no_content())
}

/// Mounts are the main server's: a mount's own socket mounts nothing.
fn main_only(app: &crate::server::App) -> ApiResult<()> {
    if !app.main {
        return Err(ApiError::invalid("mount", "mounts are made through the main store's server, not a mount's"));
    }
    Ok(())
}
