//! The typed reader of variables: each value with its default, parsed and checked against its
//! range, and an error naming the variable, the value (masked if secret) and what is allowed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use super::vars::{spec, Range};
use super::{ConfigError, LakeLocation};

/// Reads variables with their defaults and records what was parsed from where.
pub(super) struct Reader<'a> {
    pub(super) env: &'a HashMap<String, String>,
}

impl Reader<'_> {
    pub(super) fn raw(&self, name: &'static str) -> &str {
        match self.env.get(name) {
            Some(value) => value.as_str(),
            None => spec(name).default,
        }
    }

    pub(super) fn error(&self, name: &'static str, allowed: impl Into<String>) -> ConfigError {
        let spec = spec(name);
        let value = if spec.secret {
            "****".to_owned()
        } else {
            self.raw(name).to_owned()
        };
        ConfigError {
            variable: name.to_owned(),
            value,
            allowed: allowed.into(),
        }
    }

    pub(super) fn parse<T>(
        &self,
        name: &'static str,
        allowed: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<T, ConfigError> {
        parse(self.raw(name).trim()).ok_or_else(|| self.error(name, allowed))
    }

    pub(super) fn boolean(&self, name: &'static str) -> Result<bool, ConfigError> {
        self.parse(name, "expected true or false", |text| match text {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        })
    }

    /// A whole number in its variable's [`Range::Whole`].
    pub(super) fn integer(&self, name: &'static str) -> Result<u64, ConfigError> {
        let Range::Whole(min, max) = spec(name).range else {
            unreachable!("{name} is read as a whole number without a Range::Whole in config::VARS")
        };
        let allowed = format!("expected a whole number from {min} to {max}");
        self.parse(name, &allowed, |text| {
            text.parse::<u64>().ok().filter(|n| (min..=max).contains(n))
        })
    }

    /// A number in its variable's [`Range::Number`].
    pub(super) fn number(&self, name: &'static str) -> Result<f64, ConfigError> {
        let Range::Number(min, max) = spec(name).range else {
            unreachable!("{name} is read as a number without a Range::Number in config::VARS")
        };
        let allowed = format!("expected a number from {min} to {max}");
        self.parse(name, &allowed, |text| {
            text.parse::<f64>().ok().filter(|n| (min..=max).contains(n))
        })
    }

    /// A duration in its variable's [`Range::Duration`].
    pub(super) fn duration(&self, name: &'static str) -> Result<Duration, ConfigError> {
        let range = spec(name).range;
        let Range::Duration(min, max) = range else {
            unreachable!("{name} is read as a duration without a Range::Duration in config::VARS")
        };
        let allowed = format!(
            "expected a duration such as 500ms, 30s, 5m or 1h, from {}",
            range.describe().unwrap_or_default()
        );
        self.parse(name, &allowed, |text| {
            parse_duration(text).filter(|d| (min..=max).contains(d))
        })
    }

    /// A size in its variable's [`Range::Bytes`].
    pub(super) fn bytes(&self, name: &'static str) -> Result<usize, ConfigError> {
        let Range::Bytes(min, max) = spec(name).range else {
            unreachable!("{name} is read as a size without a Range::Bytes in config::VARS")
        };
        let allowed = format!(
            "expected a size such as 65536, 512KiB, 64MiB or 1GiB, from {min} to {max} bytes"
        );
        self.parse(name, &allowed, |text| {
            parse_bytes(text).filter(|n| (min..=max).contains(n))
        })
    }

    pub(super) fn optional(&self, name: &'static str) -> Option<&str> {
        Some(self.raw(name).trim()).filter(|text| !text.is_empty())
    }

    /// An optional DynamoDB table name.
    pub(super) fn table_name(&self, name: &'static str) -> Result<Option<String>, ConfigError> {
        let Some(table) = self.optional(name) else {
            return Ok(None);
        };
        let valid = (3..=255).contains(&table.len())
            && table
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !valid {
            return Err(self.error(
                name,
                "a DynamoDB table name: 3 to 255 characters of [A-Za-z0-9_.-]",
            ));
        }
        Ok(Some(table.to_owned()))
    }

    /// An optional http(s) endpoint URL.
    pub(super) fn endpoint(&self, name: &'static str) -> Result<Option<Url>, ConfigError> {
        if self.optional(name).is_none() {
            return Ok(None);
        }
        self.parse(
            name,
            "expected an http(s):// URL such as http://127.0.0.1:8000",
            |text| {
                Url::parse(text)
                    .ok()
                    .filter(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some())
            },
        )
        .map(Some)
    }
}

/// Parses `500ms`, `30s`, `5m`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(seconds).ok()
}

/// Parses `65536`, `512KiB`, `64MiB`, `1GiB`.
pub fn parse_bytes(text: &str) -> Option<usize> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: usize = number.parse().ok()?;
    let factor = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(factor)
}

pub(super) fn parse_lake_url(text: &str) -> Option<LakeLocation> {
    if let Some(path) = text.strip_prefix("file://") {
        return Some(path)
            .filter(|path| !path.is_empty())
            .map(|path| LakeLocation::Local(PathBuf::from(path)));
    }
    let rest = text.strip_prefix("s3://")?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let valid_bucket = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    valid_bucket.then(|| LakeLocation::S3 {
        bucket: bucket.to_owned(),
        prefix: prefix.trim_matches('/').to_owned(),
    })
}
