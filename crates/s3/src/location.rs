//! Where a bucket store lives: `s3://BUCKET/PREFIX?endpoint=URL&region=R&allow_http=true`.
//!
//! Credentials never appear here: they come from the standard `AWS_*` environment variables, so
//! that a URL can be logged and shown in stats.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// A parsed `s3://` store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// Key prefix of every object of this store, without leading or trailing `/`; may be empty.
    pub prefix: String,
    /// Endpoint of an S3-compatible server; `None` means AWS itself.
    pub endpoint: Option<String>,
    /// Signing region; `None` takes `AWS_REGION` (or `us-east-1`).
    pub region: Option<String>,
    /// Plain http to an endpoint that is not on this machine, asked for explicitly.
    pub allow_http: bool,
}

impl S3Location {
    /// Whether the endpoint is spoken to without TLS.
    pub fn is_plain_http(&self) -> bool {
        self.endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"))
    }
}

impl FromStr for S3Location {
    type Err = String;

    fn from_str(s: &str) -> Result<S3Location, String> {
        let url = url::Url::parse(s).map_err(|e| format!("store URL {s:?}: {e}"))?;
        if url.scheme() != "s3" {
            return Err(format!(
                "store URL {s:?}: expected s3://BUCKET/PREFIX?endpoint=http://HOST:PORT"
            ));
        }
        let bucket = url.host_str().unwrap_or("").to_string();
        if bucket.is_empty() {
            return Err(format!("store URL {s:?} names no bucket"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(
                "store URL: credentials do not belong in the URL; set AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY"
                    .into(),
            );
        }
        let prefix = url.path().trim_matches('/').to_string();
        let mut location = S3Location {
            bucket,
            prefix,
            endpoint: None,
            region: None,
            allow_http: false,
        };
        for (key, value) in url.query_pairs() {
            match &*key {
                "endpoint" => location.endpoint = Some(value.trim_end_matches('/').to_string()),
                "region" => location.region = Some(value.into_owned()),
                "allow_http" => {
                    location.allow_http = match &*value {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        other => {
                            return Err(format!(
                                "store URL: allow_http={other:?}: expected true or false"
                            ))
                        }
                    }
                }
                other => {
                    return Err(format!(
                    "store URL: unknown parameter {other:?} (known: endpoint, region, allow_http)"
                ))
                }
            }
        }
        if let Some(endpoint) = &location.endpoint {
            let parsed = url::Url::parse(endpoint)
                .map_err(|e| format!("store URL: endpoint {endpoint:?}: {e}"))?;
            match parsed.scheme() {
                "https" => {}
                "http" if location.allow_http || is_loopback(&parsed) => {}
                "http" => {
                    return Err(format!(
                        "store URL: endpoint {endpoint} is plain http and not on this machine; \
                         use https, or add allow_http=true to the URL if the network is trusted"
                    ))
                }
                other => {
                    return Err(format!(
                        "store URL: endpoint scheme {other:?}: expected http or https"
                    ))
                }
            }
        }
        Ok(location)
    }
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

impl fmt::Display for S3Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)?;
        if let Some(e) = &self.endpoint {
            write!(f, "?endpoint={e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bucket_prefix_and_endpoint() {
        let l: S3Location = "s3://data/team/a?endpoint=http://127.0.0.1:8333"
            .parse()
            .unwrap();
        assert_eq!(l.bucket, "data");
        assert_eq!(l.prefix, "team/a");
        assert_eq!(l.endpoint.as_deref(), Some("http://127.0.0.1:8333"));
        assert!(l.is_plain_http());
        let bare: S3Location = "s3://data".parse().unwrap();
        assert_eq!((bare.prefix.as_str(), bare.endpoint), ("", None));
    }

    #[test]
    fn plain_http_needs_loopback_or_an_explicit_flag() {
        let remote = "s3://b/p?endpoint=http://10.0.0.5:8333";
        let err = remote.parse::<S3Location>().unwrap_err();
        assert!(err.contains("allow_http=true"), "{err}");
        let ok: S3Location = format!("{remote}&allow_http=true").parse().unwrap();
        assert!(ok.allow_http);
        "s3://b?endpoint=http://localhost:9000"
            .parse::<S3Location>()
            .unwrap();
        "s3://b?endpoint=https://s3.example.com"
            .parse::<S3Location>()
            .unwrap();
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        for bad in [
            "http://b/p",
            "s3:///p",
            "s3://b/p?endpont=http://127.0.0.1:1",
            "s3://key:secret@b/p",
            "s3://b?endpoint=ftp://127.0.0.1",
        ] {
            assert!(bad.parse::<S3Location>().is_err(), "{bad}");
        }
    }
}
