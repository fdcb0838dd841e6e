//! Redis URLs as they may be printed or logged: without their credentials.
//!
//! Why: a Redis URL carries its password (`redis://:pw@host:6379`, or `?pass=` on a Unix
//! socket's `redis+unix:///run/redis.sock?pass=pw`), and the operator commands and `serve`
//! name the server they use in errors, in `stats` and in the log, which end up in terminals,
//! scrollback, CI logs and log stores. Invariant: every URL the binary prints or logs goes
//! through [`redact`] (or, inside a message that may quote it, [`scrub`]): its user and
//! password, wherever the URL keeps them, read `***`; a URL without credentials is printed
//! as given; one that does not parse as a Redis URL is never printed raw, since where its
//! password is cannot be known.

/// What is printed in place of a URL that does not parse.
const UNREADABLE: &str = "<a Redis URL that does not parse>";

/// The query parameters that hold credentials (the `redis` crate reads `user` and `pass` on a
/// Unix socket's URL; the longer names are taken as secrets too).
const SECRET_PARAMS: [&str; 4] = ["user", "pass", "username", "password"];

/// `url` with its user and password replaced by `***`: `redis://***:***@host:6379/0`,
/// `redis+unix:///run/redis.sock?pass=***`.
pub(crate) fn redact(url: &str) -> String {
    let Some(mut parsed) = redis::parse_redis_url(url) else {
        return UNREADABLE.to_owned();
    };
    let mut changed = false;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        // Both set, so that the form does not tell whether a user was given.
        if parsed.set_username("***").is_err() || parsed.set_password(Some("***")).is_err() {
            return UNREADABLE.to_owned();
        }
        changed = true;
    }
    let pairs: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
    if pairs
        .iter()
        .any(|(k, _)| SECRET_PARAMS.contains(&k.as_str()))
    {
        let hidden = pairs.into_iter().map(|(k, v)| {
            let v = if SECRET_PARAMS.contains(&k.as_str()) {
                "***".to_owned()
            } else {
                v
            };
            (k, v)
        });
        parsed.query_pairs_mut().clear().extend_pairs(hidden);
        changed = true;
    }
    if changed {
        parsed.to_string()
    } else {
        url.to_owned()
    }
}

/// `text` (an error from a library that may quote `url`, as given or in Rust's `{:?}` form)
/// with every quotation of `url` redacted.
pub(crate) fn scrub(text: &str, url: &str) -> String {
    if url.is_empty() {
        return text.to_owned();
    }
    let hidden = redact(url);
    text.replace(&format!("{url:?}"), &format!("{hidden:?}"))
        .replace(url, &hidden)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn o11_credentials_are_replaced_wherever_the_url_keeps_them() {
        for (given, shown) in [
            ("redis://:pw@host:6379/0", "redis://***:***@host:6379/0"),
            ("redis://user:pw@host:6379", "redis://***:***@host:6379"),
            ("redis://user@host:6379", "redis://***:***@host:6379"),
            ("rediss://:pw@host:6380/2", "rediss://***:***@host:6380/2"),
            (
                "redis+unix:///run/redis.sock?pass=pw",
                "redis+unix:///run/redis.sock?pass=***",
            ),
            (
                "redis+unix:///run/redis.sock?db=1&user=u&pass=pw",
                "redis+unix:///run/redis.sock?db=1&user=***&pass=***",
            ),
            (
                "unix:///run/redis.sock?pass=pw",
                "unix:///run/redis.sock?pass=***",
            ),
        ] {
            assert_eq!(redact(given), shown, "{given}");
        }
    }

    #[test]
    fn o11_urls_without_credentials_are_printed_as_given() {
        for url in [
            "redis://127.0.0.1:6379",
            "redis://host:6379/3",
            "rediss://host",
            "redis+unix:///run/redis.sock",
            "redis+unix:///run/redis.sock?db=2",
        ] {
            assert_eq!(redact(url), url);
        }
    }

    #[test]
    fn o11_a_url_that_does_not_parse_is_never_printed() {
        for url in [
            "redis://:pw@host:notaport",
            "http://:pw@host:80",
            "pw",
            "",
            "redis://:pw@[::1",
        ] {
            assert_eq!(redact(url), UNREADABLE, "{url}");
        }
    }

    #[test]
    fn o11_a_message_quoting_the_url_is_scrubbed() {
        let url = "redis://:pw@host:notaport";
        let said = format!("bad setting RedisOptions::new: {url:?} (invalid port); at {url}");
        let scrubbed = scrub(&said, url);
        assert!(!scrubbed.contains("pw"), "{scrubbed}");
        assert!(scrubbed.contains(UNREADABLE), "{scrubbed}");
    }
}
