//! The S3 client of the remote tier: object_store's `AmazonS3`, signed
//! with credentials from the environment only (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`; object_store reads no
//! profile files), with path-style requests and short retries: a store
//! that does not answer is ruled out by the read path, not waited for.

use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::{BackoffConfig, ClientOptions, RetryConfig};

use super::RemoteConfig;

/// No connection within this long: the store is down, for now.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The client for `config`. The configuration's endpoint, bucket and
/// region win over `AWS_ENDPOINT`, `AWS_BUCKET` and `AWS_REGION`.
pub fn build(config: &RemoteConfig) -> Result<AmazonS3, object_store::Error> {
    // reqwest is built without a default crypto provider (see `fetch`).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let options = ClientOptions::new()
        .with_allow_http(config.endpoint.scheme() == "http")
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout_disabled();
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            base: 2.0,
        },
        max_retries: 1,
        retry_timeout: Duration::from_secs(10),
    };
    let endpoint = config.endpoint.as_str().trim_end_matches('/');
    AmazonS3Builder::from_env()
        .with_endpoint(endpoint)
        .with_bucket_name(&config.bucket)
        .with_region(&config.region)
        .with_virtual_hosted_style_request(false)
        .with_client_options(options)
        .with_retry(retry)
        .build()
}
