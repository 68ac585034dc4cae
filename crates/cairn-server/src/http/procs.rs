//! Processors over HTTP: register (`POST /v1/procs/{name}`, the body is
//! the registration), list, stop, and read or follow a processor's log.
//! Registering and stopping are appends of `cairn.proc.<name>.create` and
//! `.term` as the caller, so the service authorizes them as any append
//! (the socket, admins, and users with a write pattern naming
//! `cairn.proc.`); the answer waits for what the supervisor made of it.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, Response, StatusCode};
use cairn_service::{Batch, Expect, NewEvent, Pattern, Topic};

use super::stream::{self, ReadSpec};
use super::{ApiError, ApiResult, Params, Segment, State, Who, json_response, read_body, to_json};

/// How long a registration's answer waits for its outcome.
const OUTCOME_WAIT: Duration = Duration::from_secs(10);

fn check(name: &str) -> ApiResult<()> {
    cairn_proc::check_name(name).map_err(|rule| ApiError::invalid("name", rule))
}

/// `GET /v1/procs`: the processors running whose registration the caller
/// may read.
pub(crate) async fn list(AxumState(app): State, Who(principal): Who, params: Params) -> ApiResult<Response<Body>> {
    params.finish()?;
    let Some(procs) = &app.procs else {
        return Ok(json_response(StatusCode::OK, to_json(&Vec::<()>::new()), None));
    };
    let listed = procs.list(&principal);
    Ok(json_response(StatusCode::OK, to_json(&listed), None))
}

/// `POST /v1/procs/{name}`: registers (or replaces) a processor; 201 with
/// `{"name","proc_id","state":"active"}`, 400 with the reason it is
/// invalid (the registration stays in the log; the last good one runs on),
/// 202 when its outcome is not known within 10 s.
pub(crate) async fn create(
    AxumState(app): State,
    Who(principal): Who,
    Segment(name): Segment,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response<Body>> {
    params.finish()?;
    check(&name)?;
    let bytes = read_body(&app, &headers, body, "registration", cairn_proc::spec::SPEC_BYTES_MAX as u64).await?;
    // Checked here too, so a broken registration is refused at once
    // (the supervisor checks again what arrives by other routes).
    cairn_proc::Spec::parse(&bytes).map_err(|rule| ApiError::invalid("registration", rule))?;
    let topic = Topic::new(&format!("{}{name}.create", cairn_proc::PREFIX))?;
    let event = NewEvent::new(topic, bytes.to_vec()).with_type("application/json");
    let mut events = app.service.append(&principal, Batch::single(event, Expect::Any)).await?;
    let create = events.remove(0);
    let mut json = serde_json::json!({ "name": name, "proc_id": create.id.to_string() });
    let status = match &app.procs {
        None => {
            json["state"] = "registered".into();
            json["reason"] = "this server runs no processors (--no-procs)".into();
            StatusCode::ACCEPTED
        }
        Some(procs) if !procs.is_active() => {
            json["state"] = "registered".into();
            json["reason"] = "another server on this database runs the processors".into();
            StatusCode::ACCEPTED
        }
        Some(procs) => match procs.outcome(create.id, OUTCOME_WAIT).await {
            Some(outcome) if outcome.state == "invalid" => {
                let reason = outcome.reason.unwrap_or_default();
                return Err(ApiError::invalid("registration", format!("{reason} (registration {})", create.id)));
            }
            Some(outcome) => {
                json["state"] = outcome.state.into();
                StatusCode::CREATED
            }
            None => {
                json["state"] = "registered".into();
                StatusCode::ACCEPTED
            }
        },
    };
    Ok(json_response(status, to_json(&json), None))
}

/// `DELETE /v1/procs/{name}`: stops a processor (appends its term); 204
/// once it stopped here, 202 when another server runs the processors or
/// it is still stopping after 10 s.
pub(crate) async fn term(
    AxumState(app): State,
    Who(principal): Who,
    Segment(name): Segment,
    params: Params,
) -> ApiResult<Response<Body>> {
    params.finish()?;
    check(&name)?;
    let topic = Topic::new(&format!("{}{name}.term", cairn_proc::PREFIX))?;
    let event = NewEvent { topic: Some(topic), ..NewEvent::default() };
    app.service.append(&principal, Batch::single(event, Expect::Any)).await?;
    match &app.procs {
        Some(procs) if procs.is_active() && procs.wait_gone(&name, Duration::from_secs(10)).await => {
            Ok(super::no_content())
        }
        _ => Ok(json_response(
            StatusCode::ACCEPTED,
            to_json(&serde_json::json!({ "name": name, "state": "stopping" })),
            None,
        )),
    }
}

/// `GET /v1/procs/{name}/logs`: the processor's stderr lines
/// (`<name>.log`), read or followed as `GET /v1/topics/{topic}/events`.
pub(crate) async fn logs(
    AxumState(app): State,
    Who(principal): Who,
    Segment(name): Segment,
    mut params: Params,
    headers: HeaderMap,
) -> ApiResult<Response<Body>> {
    check(&name)?;
    let spec = ReadSpec::parse(&mut params, &headers, Pattern::Exact(Topic::new(&format!("{name}.log"))?))?;
    params.finish()?;
    stream::respond(&app, &principal, &headers, spec).await
}
