//! When this client packs tensors (protocol §2.7): the one rule, used for
//! what it sends and for what it asks results to be.
//!
//! Packing trades CPU for bytes. Over a real link (a LAN, the internet) the
//! bytes cost more than the packer; to a worker on the same machine they do
//! not (loopback moves gigabytes a second, more than zstd packs), so there
//! the default sends plain tensors.

use std::net::IpAddr;

use reqwest::Url;

use crate::error::{ClientError, Result};

/// The packing policy (`COMFY_REMOTE_PACK`: `auto`, `always`, `never`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Packing {
    /// Pack unless the endpoint is on this machine (a loopback host).
    #[default]
    Auto,
    /// Pack whatever the endpoint reads, wherever it is.
    Always,
    /// Send and ask for plain tensors only.
    Never,
}

impl Packing {
    /// The words `COMFY_REMOTE_PACK` takes, in the order the error lists them.
    pub const WORDS: [&'static str; 3] = ["auto", "always", "never"];

    /// Parse one of [`Packing::WORDS`] (case and surrounding blanks ignored).
    pub fn parse(value: &str) -> Result<Packing> {
        match value.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(Packing::Auto),
            "always" => Ok(Packing::Always),
            "never" => Ok(Packing::Never),
            _ => Err(ClientError::InvalidSetting {
                name: comfy_remote_protocol::env::PACK,
                value: value.to_owned(),
                expected: Packing::WORDS.join(", "),
            }),
        }
    }

    /// The policy `COMFY_REMOTE_PACK` sets; [`Packing::Auto`] when unset.
    pub fn from_env() -> Result<Packing> {
        match std::env::var(comfy_remote_protocol::env::PACK) {
            Ok(v) => Packing::parse(&v),
            Err(_) => Ok(Packing::Auto),
        }
    }

    /// Whether tensors to and from `endpoint` are packed.
    pub fn applies_to(self, endpoint: &Url) -> bool {
        match self {
            Packing::Always => true,
            Packing::Never => false,
            Packing::Auto => !is_local(endpoint),
        }
    }
}

/// Whether `url`'s host is this machine: a loopback or unspecified address,
/// `localhost` or a name under `.localhost`.
pub fn is_local(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return is_local_ip(ip);
    }
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

fn is_local_ip(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    ip.is_loopback() || ip.is_unspecified()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).expect("a URL")
    }

    #[test]
    fn auto_packs_for_every_host_but_this_machine() {
        for local in [
            "http://127.0.0.1:8189",
            "http://127.3.2.1/",
            "http://localhost:8189/v1",
            "http://LocalHost./",
            "http://gpu.localhost/",
            "http://[::1]:8189/",
            "http://[::ffff:127.0.0.1]/",
            "http://0.0.0.0:8189/",
        ] {
            assert!(!Packing::Auto.applies_to(&url(local)), "{local}");
            assert!(Packing::Always.applies_to(&url(local)), "{local}");
        }
        for remote in [
            "https://me--app.modal.run/",
            "http://192.168.1.20:8189/",
            "http://10.0.0.5/",
            "http://[2001:db8::1]/",
            "http://localhost.example.com/",
        ] {
            assert!(Packing::Auto.applies_to(&url(remote)), "{remote}");
            assert!(!Packing::Never.applies_to(&url(remote)), "{remote}");
        }
    }

    #[test]
    fn words_parse_and_a_typo_names_the_variable_and_the_choices() {
        assert_eq!(Packing::parse(" Always ").expect("always"), Packing::Always);
        assert_eq!(Packing::parse("never").expect("never"), Packing::Never);
        assert_eq!(Packing::parse("").expect("empty"), Packing::Auto);
        let msg = Packing::parse("alwys").expect_err("a typo").to_string();
        assert!(
            msg.contains("COMFY_REMOTE_PACK") && msg.contains("auto, always, never"),
            "{msg}"
        );
    }
}
