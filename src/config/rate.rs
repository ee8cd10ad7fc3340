//! A client's `rate` (`"50/s"`): how many requests per second, minute or hour.

use std::time::Duration;

/// A request rate: `count` requests per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// How many requests.
    pub count: u32,
    /// In how much time: a second, a minute or an hour.
    pub per: Duration,
}

impl Rate {
    /// Parses `N/s`, `N/m` or `N/h` (spaces allowed around the slash), N from 1.
    pub fn parse(text: &str) -> Result<Self, String> {
        let wrong = || {
            format!("`{text}` is not a rate: write requests per unit, like \"50/s\", \"600/m\" or \"10000/h\"")
        };
        let (count, unit) = text.split_once('/').ok_or_else(wrong)?;
        let count: u32 = count.trim().parse().map_err(|_| wrong())?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(wrong()),
        };
        if count == 0 {
            return Err("must allow at least 1 request (leave `rate` out for no limit)".into());
        }
        Ok(Self { count, per })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_by_unit_and_nonsense_is_refused() {
        assert_eq!(
            Rate::parse("50/s").unwrap(),
            Rate {
                count: 50,
                per: Duration::from_secs(1)
            }
        );
        assert_eq!(
            Rate::parse(" 600 / m ").unwrap().per,
            Duration::from_secs(60)
        );
        assert_eq!(Rate::parse("1/h").unwrap().per, Duration::from_secs(3600));
        for bad in ["50", "50/d", "x/s", "-1/s", "0/s", "/s", "50/"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }
}
