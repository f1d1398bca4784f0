//! The standard OpenTelemetry variables Warren honours, read strictly: a value Warren cannot
//! honour stops the process at start naming the variable, instead of being ignored.

use std::time::Duration;

use opentelemetry_sdk::trace::Sampler;

/// Where and how spans are exported.
#[derive(Debug, Clone)]
pub struct OtelSettings {
    /// The collector's traces URL (`…/v1/traces`).
    pub traces_url: String,
    /// `service.name` of every span.
    pub service_name: String,
    /// Which traces are recorded.
    pub sampler: Sampler,
    /// Most spans waiting for export; more are dropped (and counted).
    pub max_queue: usize,
    /// Most spans per export request.
    pub max_batch: usize,
    /// How long a span waits at most before its batch is sent.
    pub schedule_delay: Duration,
}

/// A variable Warren cannot honour.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}={value:?} is not valid: {rule}")]
pub struct OtelSettingError {
    /// The variable.
    pub variable: &'static str,
    /// Its value.
    pub value: String,
    /// What it may be.
    pub rule: String,
}

/// The default export queue: at a few spans per job, a few seconds of a busy process.
const DEFAULT_QUEUE: usize = 2048;
const DEFAULT_BATCH: usize = 512;
const DEFAULT_DELAY_MS: u64 = 5000;

impl OtelSettings {
    /// The settings in the process's environment; `None` when no collector is named (nothing
    /// is exported) or `OTEL_SDK_DISABLED=true`.
    ///
    /// # Errors
    /// A variable whose value Warren cannot honour.
    pub fn from_env(default_service: &str) -> Result<Option<Self>, OtelSettingError> {
        Self::from_vars(default_service, |name| std::env::var(name).ok())
    }

    /// [`OtelSettings::from_env`] over `var` (unset and empty are the same).
    ///
    /// # Errors
    /// A variable whose value Warren cannot honour.
    pub fn from_vars(
        default_service: &str,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, OtelSettingError> {
        let var = |name: &str| {
            var(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let traces_url = match (
            var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            var("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(url), _) => checked_url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url)?,
            (None, Some(base)) => {
                let base = checked_url("OTEL_EXPORTER_OTLP_ENDPOINT", base)?;
                format!("{}/v1/traces", base.trim_end_matches('/'))
            }
            (None, None) => return Ok(None),
        };
        for variable in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(value) = var(variable)
                && value != "http/protobuf"
            {
                return Err(OtelSettingError {
                    variable,
                    value,
                    rule: "Warren exports over http/protobuf only (a collector's port 4318); set \
                           it to http/protobuf or unset it"
                        .into(),
                });
            }
        }
        let traces_exporter = var("OTEL_TRACES_EXPORTER");
        if traces_exporter.as_deref() == Some("none") {
            return Ok(None);
        }
        if let Some(value) = traces_exporter.filter(|v| v != "otlp") {
            return Err(OtelSettingError {
                variable: "OTEL_TRACES_EXPORTER",
                value,
                rule: "it may be otlp (the default) or none".into(),
            });
        }
        Ok(Some(Self {
            traces_url,
            service_name: var("OTEL_SERVICE_NAME").unwrap_or_else(|| default_service.to_owned()),
            sampler: sampler(
                var("OTEL_TRACES_SAMPLER"),
                var("OTEL_TRACES_SAMPLER_ARG").as_deref(),
            )?,
            max_queue: count(&var, "OTEL_BSP_MAX_QUEUE_SIZE", DEFAULT_QUEUE)?,
            max_batch: count(&var, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", DEFAULT_BATCH)?,
            schedule_delay: Duration::from_millis(count(
                &var,
                "OTEL_BSP_SCHEDULE_DELAY",
                DEFAULT_DELAY_MS as usize,
            )? as u64),
        }))
    }
}

fn checked_url(variable: &'static str, url: String) -> Result<String, OtelSettingError> {
    let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
    let host_ok = url.split("://").nth(1).is_some_and(|rest| !rest.is_empty());
    if scheme_ok && host_ok {
        return Ok(url);
    }
    Err(OtelSettingError {
        variable,
        value: url,
        rule: "it must be an http:// or https:// URL, e.g. http://localhost:4318".into(),
    })
}

fn count(
    var: &impl Fn(&str) -> Option<String>,
    variable: &'static str,
    default: usize,
) -> Result<usize, OtelSettingError> {
    let Some(value) = var(variable) else {
        return Ok(default);
    };
    match value.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(OtelSettingError {
            variable,
            value,
            rule: "it must be a whole number above 0".into(),
        }),
    }
}

/// `OTEL_TRACES_SAMPLER` (default `parentbased_always_on`) with its `OTEL_TRACES_SAMPLER_ARG`.
fn sampler(name: Option<String>, arg: Option<&str>) -> Result<Sampler, OtelSettingError> {
    let ratio = || -> Result<f64, OtelSettingError> {
        let Some(arg) = arg else {
            return Ok(1.0);
        };
        match arg.parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
            _ => Err(OtelSettingError {
                variable: "OTEL_TRACES_SAMPLER_ARG",
                value: arg.to_owned(),
                rule: "it must be a ratio from 0 to 1, e.g. 0.1".into(),
            }),
        }
    };
    let name = name.unwrap_or_else(|| "parentbased_always_on".to_owned());
    Ok(match name.as_str() {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(ratio()?),
        "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        "parentbased_traceidratio" => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio()?)))
        }
        _ => {
            return Err(OtelSettingError {
                variable: "OTEL_TRACES_SAMPLER",
                value: name,
                rule: "it may be always_on, always_off, traceidratio, parentbased_always_on (the \
                       default), parentbased_always_off or parentbased_traceidratio"
                    .into(),
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn read(vars: &[(&str, &str)]) -> Result<Option<OtelSettings>, OtelSettingError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        OtelSettings::from_vars("warren-test", |name| vars.get(name).cloned())
    }

    #[test]
    fn nothing_is_exported_without_an_endpoint_or_when_disabled() {
        assert!(read(&[]).unwrap().is_none());
        assert!(read(&[("OTEL_SERVICE_NAME", "x")]).unwrap().is_none());
        let disabled = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ];
        assert!(read(&disabled).unwrap().is_none());
        let none = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ];
        assert!(read(&none).unwrap().is_none());
    }

    #[test]
    fn the_endpoint_gets_the_traces_path_and_the_service_name_a_default() {
        let settings = read(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")])
            .unwrap()
            .unwrap();
        assert_eq!(settings.traces_url, "http://c:4318/v1/traces");
        assert_eq!(settings.service_name, "warren-test");
        assert!(matches!(settings.sampler, Sampler::ParentBased(_)));
        let settings = read(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://t/x"),
            ("OTEL_SERVICE_NAME", "api"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(settings.traces_url, "https://t/x");
        assert_eq!(settings.service_name, "api");
        assert!(matches!(settings.sampler, Sampler::TraceIdRatioBased(r) if r == 0.25));
    }

    #[test]
    fn values_warren_cannot_honour_name_the_variable() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        for (bad, variable) in [
            (
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ),
            (("OTEL_TRACES_SAMPLER", "sometimes"), "OTEL_TRACES_SAMPLER"),
            (("OTEL_BSP_MAX_QUEUE_SIZE", "0"), "OTEL_BSP_MAX_QUEUE_SIZE"),
            (("OTEL_TRACES_EXPORTER", "zipkin"), "OTEL_TRACES_EXPORTER"),
        ] {
            let error = read(&[endpoint, bad]).unwrap_err();
            assert_eq!(error.variable, variable);
        }
        let error = read(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")]).unwrap_err();
        assert!(error.to_string().contains("http://"), "{error}");
        let error = read(&[
            endpoint,
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ])
        .unwrap_err();
        assert_eq!(error.variable, "OTEL_TRACES_SAMPLER_ARG");
    }
}
