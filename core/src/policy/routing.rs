//! Provider routing: which provider a model id belongs to, from the
//! registry's routes. The BYOK rule and the concierge helpers ask it.

/// One row of `secretgate.model_routes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub pattern: String,
    pub provider: String,
    /// `None`: any runtime.
    pub runtime: Option<String>,
}

/// The provider a model id routes to: among the routes whose pattern is a
/// prefix of the model and whose runtime is the workspace's (or any), one
/// naming the runtime beats one that does not, then the longest pattern
/// (in characters) wins, then the smallest provider name (so ties are
/// decided the same way everywhere). `None` when nothing matches.
pub fn route<'a>(routes: &'a [Route], runtime: Option<&str>, model: &str) -> Option<&'a str> {
    routes
        .iter()
        .filter(|r| model.starts_with(r.pattern.as_str()))
        .filter(|r| r.runtime.is_none() || r.runtime.as_deref() == runtime)
        .min_by(|a, b| {
            let rank =
                |r: &Route| (std::cmp::Reverse(r.runtime.is_some()), std::cmp::Reverse(r.pattern.chars().count()));
            rank(a).cmp(&rank(b)).then_with(|| a.provider.cmp(&b.provider))
        })
        .map(|r| r.provider.as_str())
}
