//! The content store: `PUT`/`POST /v1/cas` stores a body and returns its
//! hash; `GET`/`HEAD`/`DELETE /v1/cas/{hash}` by SRI (`sha256-…`,
//! percent-encoded) or hex. The service decides who may see and delete
//! what (content is visible to who put it and to readers of an event whose
//! payload it is; to anyone else it is not found). `GET` verifies the
//! bytes before sending them.

use axum::body::Body;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use cairn_service::Hash;

use super::{
    ApiResult, Params, Segment, State, Who, json_response, not_modified, not_modified_response, read_body, to_json,
};

/// `PUT /v1/cas`: stores the body; replies `{"hash","hex","size"}`.
pub(crate) async fn put(
    AxumState(app): State,
    Who(principal): Who,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response<Body>> {
    params.finish()?;
    let bytes = read_body(&app, &headers, body, "content", app.service.limits().payload_bytes_max).await?;
    let size = bytes.len();
    let hash = app.service.cas_put(&principal, bytes.to_vec()).await?;
    let json = serde_json::json!({ "hash": hash.sri(), "hex": hash.hex(), "size": size });
    Ok(json_response(StatusCode::CREATED, to_json(&json), Some(&format!("\"{}\"", hash.hex()))))
}

/// `GET /v1/cas/{hash}`: the bytes, verified.
pub(crate) async fn get(
    AxumState(app): State,
    Who(principal): Who,
    Segment(hash): Segment,
    params: Params,
    headers: HeaderMap,
) -> ApiResult<Response<Body>> {
    params.finish()?;
    let hash = Hash::parse(&hash)?;
    let bytes = app.service.cas_get(&principal, &hash).await?;
    let etag = format!("\"{}\"", hash.hex());
    if not_modified(&headers, &etag) {
        return Ok(not_modified_response(&etag));
    }
    Ok(content_response(bytes, &etag, false))
}

/// `HEAD /v1/cas/{hash}`: 200 with the length if present (for this
/// caller), else 404.
pub(crate) async fn head(
    AxumState(app): State,
    Who(principal): Who,
    Segment(hash): Segment,
    params: Params,
) -> ApiResult<Response<Body>> {
    params.finish()?;
    let hash = Hash::parse(&hash)?;
    let bytes = app.service.cas_get(&principal, &hash).await?;
    Ok(content_response(bytes, &format!("\"{}\"", hash.hex()), true))
}

/// The bytes of content (or just their length). Content never changes, but
/// who may see it does: caches may keep it for this client only.
pub(crate) fn content_response(bytes: Vec<u8>, etag: &str, head: bool) -> Response<Body> {
    let length = bytes.len();
    let mut response = Response::new(if head { Body::empty() } else { Body::from(bytes) });
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=31536000, immutable"));
    if let Ok(value) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, value);
    }
    response
}

/// `DELETE /v1/cas/{hash}`: drops the caller's claim on content (admins:
/// every claim), and the bytes once unclaimed; 409 while an event's
/// payload is that content.
pub(crate) async fn delete(
    AxumState(app): State,
    Who(principal): Who,
    Segment(hash): Segment,
    params: Params,
) -> ApiResult<Response<Body>> {
    params.finish()?;
    let hash = Hash::parse(&hash)?;
    app.service.cas_delete(&principal, &hash).await?;
    Ok(super::no_content())
}
