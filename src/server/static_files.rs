//! The files served at `/` (`server.static_dir`: the demo page and the browser
//! client): how a request maps to a file, what a path the file system refuses becomes,
//! and the headers every file carries (docs/PROTOCOL.md §3).
//!
//! Headers: `Content-Security-Policy` and `X-Frame-Options` because the demo page
//! renders text other people typed (it only ever uses `textContent`; the policy is the
//! second line of defence), and `Cache-Control: no-cache` so that browsers keep the
//! files but revalidate them (ETag / Last-Modified, answered 304) on every use: a new
//! `herald.js` reaches every page at its next load, without a versioned file name.
//! `X-Content-Type-Options: nosniff` is set on every answer of the node, by the router.

use std::convert::Infallible;
use std::io;
use std::path::Path;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, any};
use tower_http::services::ServeDir;
use tower_http::set_header::SetResponseHeaderLayer;

/// Only the node's own scripts, styles and WebSocket (`connect-src 'self'` covers
/// `ws:`/`wss:` to the same host and port in CSP Level 3 browsers: the demo connects
/// to `/ws` of the node that served it). `img-src data:` is the page's empty favicon.
/// No inline script or style, no plugins, no `<base>`, forms post to the node only,
/// and no page may frame it (`X-Frame-Options` says the same to older browsers).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The service answering every path no route claims, from `dir`.
pub fn service(dir: &Path) -> MethodRouter {
    let files = ServeDir::new(dir);
    let set = |name: HeaderName, value: &'static str| {
        SetResponseHeaderLayer::if_not_present(name, HeaderValue::from_static(value))
    };
    any(move |req: Request| {
        let mut files = files.clone();
        async move { respond(files.try_call(req).await) }
    })
    // The error type stays the handler's (none); `layer` cannot infer it.
    .layer::<_, Infallible>(set(header::CACHE_CONTROL, "no-cache"))
    .layer::<_, Infallible>(set(
        header::CONTENT_SECURITY_POLICY,
        CONTENT_SECURITY_POLICY,
    ))
    .layer::<_, Infallible>(set(header::X_FRAME_OPTIONS, "DENY"))
}

/// A file, or why there is none. A path that cannot name a file here (a name longer
/// than the file system allows, a file used as a directory, …) is a 404 like any
/// missing file, logged at debug only: clients choose paths, so such a request says
/// nothing about the node. Any other failure to read is the node's problem: 500, and
/// an error in the log.
fn respond<B>(result: io::Result<axum::http::Response<B>>) -> Response
where
    B: axum::body::HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    match result {
        Ok(response) => response.map(Body::new),
        Err(e) if names_no_file(&e) => {
            tracing::debug!(error = %e, "static file path names no file");
            StatusCode::NOT_FOUND.into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "static file could not be read");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Errors that mean "no such file" for a path a client made up.
fn names_no_file(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        e.kind(),
        NotFound | PermissionDenied | NotADirectory | IsADirectory | InvalidFilename | InvalidInput
    ) || e.raw_os_error() == Some(libc::ELOOP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_names_are_no_file_and_io_failures_are_not() {
        // ENAMETOOLONG, ENOTDIR, ELOOP: paths a client chose.
        for errno in [libc::ENAMETOOLONG, libc::ENOTDIR, libc::ELOOP, libc::ENOENT] {
            assert!(
                names_no_file(&io::Error::from_raw_os_error(errno)),
                "{errno}"
            );
        }
        // EIO, EMFILE: the node's own trouble.
        for errno in [libc::EIO, libc::EMFILE] {
            assert!(
                !names_no_file(&io::Error::from_raw_os_error(errno)),
                "{errno}"
            );
        }
    }
}
