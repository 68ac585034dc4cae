//! The content store: `PUT`/`POST /v1/cas` stores a body and returns its
//! hash; `GET`/`HEAD`/`DELETE /v1/cas/{hash}` by SRI (`sha256-…`,
//! percent-encoded) or hex. `GET` verifies the bytes before sending them.

use axum::body::Body;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use cairn_store::{Hash, StoreError};

use super::{Params, Segment, State, blocking, json_response, not_modified, not_modified_response, read_body, to_json};
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};

/// `PUT /v1/cas`: stores the body; replies `{"hash","hex","size"}`.
pub(crate) async fn put(
    AxumState(app): State,
    principal: Principal,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response<Body>> {
    params.finish()?;
    check_any_write(&principal)?;
    let bytes = read_body(&headers, body, "content", app.store.options().payload_bytes_max).await?;
    let size = bytes.len();
    let hash = blocking(&app, move |store| Ok(store.cas_put(&bytes)?)).await?;
    let json = serde_json::json!({ "hash": hash.sri(), "hex": hash.hex(), "size": size });
    Ok(json_response(StatusCode::CREATED, to_json(&json)?, Some(&format!("\"{}\"", hash.hex()))))
}

/// Content is not per topic: putting it needs some write permission.
pub(crate) fn check_any_write(principal: &Principal) -> ApiResult<()> {
    match principal {
        Principal::User(user) if user.write.is_empty() => {
            Err(ApiError::forbidden(format!("user {} may not write anything", user.name)))
        }
        _ => Ok(()),
    }
}

/// `GET /v1/cas/{hash}`: the bytes, verified.
pub(crate) async fn get(
    AxumState(app): State,
    Segment(hash): Segment,
    params: Params,
    headers: HeaderMap,
) -> ApiResult<Response<Body>> {
    params.finish()?;
    let hash = Hash::parse(&hash)?;
    let etag = format!("\"{}\"", hash.hex());
    if not_modified(&headers, &etag) {
        return Ok(not_modified_response(&etag));
    }
    let bytes = blocking(&app, move |store| Ok(store.cas_get(&hash)?)).await?;
    content_response(bytes, &etag, false)
}

/// `HEAD /v1/cas/{hash}`: 200 with the length if present, else 404.
pub(crate) async fn head(AxumState(app): State, Segment(hash): Segment, params: Params) -> ApiResult<Response<Body>> {
    params.finish()?;
    let hash = Hash::parse(&hash)?;
    let etag = format!("\"{}\"", hash.hex());
    let bytes = blocking(&app, move |store| Ok(store.cas_get(&hash)?)).await?;
    content_response(bytes, &etag, true)
}

pub(crate) fn content_response(bytes: Vec<u8>, etag: &str, head: bool) -> ApiResult<Response<Body>> {
    let length = bytes.len();
    let mut response = Response::new(if head { Body::empty() } else { Body::from(bytes) });
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable"));
    headers.insert(header::ETAG, HeaderValue::from_str(etag).map_err(|error| ApiError::internal(error.to_string()))?);
    Ok(response)
}

/// `DELETE /v1/cas/{hash}`: deletes content put on its own; 409 while an
/// event's payload is that content.
pub(crate) async fn delete(
    AxumState(app): State,
    principal: Principal,
    Segment(hash): Segment,
    params: Params,
) -> ApiResult<Response<Body>> {
    params.finish()?;
    check_any_write(&principal)?;
    let hash = Hash::parse(&hash)?;
    blocking(&app, move |store| delete_content(store, &hash)).await?;
    Ok(super::no_content())
}

/// Deletes content, with the API's statuses (404 none, 409 in use).
pub(crate) fn delete_content(store: &cairn_store::Store, hash: &Hash) -> ApiResult<()> {
    match store.cas_delete(hash) {
        Ok(true) => Ok(()),
        Ok(false) => Err(ApiError::not_found("content", hash.sri())),
        Err(error @ StoreError::InUse { .. }) => Err(ApiError::new(StatusCode::CONFLICT, "in_use", error.to_string())),
        Err(error) => Err(error.into()),
    }
}
