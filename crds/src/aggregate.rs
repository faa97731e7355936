//! Aggregate calls as written in `aggregate:` entries (`sum(amount)`, `count(*)`), parsed once
//! here so that validation and the worker agree on what is accepted.

/// Aggregate functions a window can compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AggregateFn {
    Count,
    Sum,
    Min,
    Max,
    Avg,
    First,
    Last,
    CountDistinct,
}

impl AggregateFn {
    /// Every function with its manifest name.
    pub const ALL: [(&'static str, AggregateFn); 8] = [
        ("count", AggregateFn::Count),
        ("sum", AggregateFn::Sum),
        ("min", AggregateFn::Min),
        ("max", AggregateFn::Max),
        ("avg", AggregateFn::Avg),
        ("first", AggregateFn::First),
        ("last", AggregateFn::Last),
        ("count_distinct", AggregateFn::CountDistinct),
    ];
}

/// A parsed aggregate call; `arg` is `None` for `count(*)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AggregateCall {
    pub func: AggregateFn,
    pub arg: Option<String>,
}

/// Parses `name(arg)`; the argument is an expression checked later against the input schema.
pub fn parse_aggregate(text: &str) -> Result<AggregateCall, String> {
    let t = text.trim();
    let (name, rest) = t
        .split_once('(')
        .ok_or_else(|| format!("`{text}` is not an aggregate call; write e.g. `sum(amount)` or `count(*)`"))?;
    let arg = rest.strip_suffix(')').ok_or_else(|| format!("`{text}` is missing its closing parenthesis"))?.trim();
    let lname = name.trim().to_ascii_lowercase();
    let func = AggregateFn::ALL.iter().find(|(n, _)| *n == lname).map(|(_, f)| *f).ok_or_else(|| {
        let names: Vec<&str> = AggregateFn::ALL.iter().map(|(n, _)| *n).collect();
        format!("unknown aggregate `{}`; use one of {}", name.trim(), names.join(", "))
    })?;
    match (func, arg) {
        (_, "") => Err(format!("`{text}` has no argument")),
        (AggregateFn::Count, "*") => Ok(AggregateCall { func, arg: None }),
        (_, "*") => Err(format!("`*` is only allowed in count(*), not in `{text}`")),
        (_, a) => Ok(AggregateCall { func, arg: Some(a.to_string()) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_calls() {
        assert_eq!(parse_aggregate("count(*)").unwrap(), AggregateCall { func: AggregateFn::Count, arg: None });
        let c = parse_aggregate(" SUM( amount * 2 ) ").unwrap();
        assert_eq!(c.func, AggregateFn::Sum);
        assert_eq!(c.arg.as_deref(), Some("amount * 2"));
        assert_eq!(parse_aggregate("count_distinct(merchant_id)").unwrap().func, AggregateFn::CountDistinct);
    }

    #[test]
    fn rejects_with_reason() {
        assert!(parse_aggregate("median(x)").unwrap_err().contains("unknown aggregate `median`"));
        assert!(parse_aggregate("sum(*)").unwrap_err().contains("only allowed in count"));
        assert!(parse_aggregate("sum(x").unwrap_err().contains("closing parenthesis"));
        assert!(parse_aggregate("amount").unwrap_err().contains("not an aggregate call"));
        assert!(parse_aggregate("max()").unwrap_err().contains("no argument"));
    }
}
