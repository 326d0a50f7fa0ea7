//! Durations as people write them: `1h30m`, `2d`, `90s`, `1h0m30s`, or plain seconds `600`.
//!
//! The grammar, after leading and trailing whitespace is trimmed:
//!
//! ```text
//! duration  = seconds / compound
//! seconds   = 1*DIGIT                       ; plain seconds: `600`
//! compound  = 1*(1*DIGIT unit)              ; units strictly from largest to smallest, each once
//! unit      = "d" / "h" / "m" / "s"         ; 86400, 3600, 60 and 1 seconds
//! ```
//!
//! Everything else is refused with an error that quotes the input and shows the accepted form: a
//! number without a unit after another group (`1h30`: is it 30 minutes or 30 seconds?), a unit
//! without a number (`h`), signs (`-5m`), fractions, spaces inside, upper-case or unknown units, units
//! repeated or out of order (`30m1h`), the empty string, and values beyond `u64` seconds.
//!
//! [`Compound`] prints a duration in the canonical form (`5400s` prints as `1h30m`); parsing that
//! text gives back the same whole number of seconds.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// How an error message shows the accepted form.
const ACCEPTED: &str =
    "write whole numbers with units d, h, m, s from largest to smallest, like `1h30m`, `2d` or `90s`, or plain seconds like `600`";

/// Longest input quoted back in an error.
const MAX_QUOTED: usize = 64;

/// The units, largest first, with their length in seconds.
const UNITS: [(char, u64); 4] = [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)];

/// Why a text is not a duration. Every message quotes the input and shows the accepted form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Nothing (or only whitespace) was given.
    #[error("an empty duration is not a duration; {ACCEPTED}")]
    Empty,
    /// A sign: durations are never negative, and `+` is not part of the form.
    #[error("`{input}` has a sign; durations are not negative; {ACCEPTED}")]
    Sign {
        /// The input.
        input: String,
    },
    /// A unit with no number before it (`h`, `1hm`).
    #[error("`{input}`: unit `{unit}` has no number before it; {ACCEPTED}")]
    MissingNumber {
        /// The input.
        input: String,
        /// The unit.
        unit: char,
    },
    /// A number with no unit after other groups (`1h30`).
    #[error("`{input}`: the number `{number}` has no unit (only a duration that is a plain number is read as seconds); {ACCEPTED}")]
    MissingUnit {
        /// The input.
        input: String,
        /// The trailing number.
        number: String,
    },
    /// A character that is neither a digit nor one of the units.
    #[error("`{input}` has unknown unit `{unit}`; {ACCEPTED}")]
    UnknownUnit {
        /// The input.
        input: String,
        /// The offending character.
        unit: char,
    },
    /// A unit given twice (`1m2m`).
    #[error("`{input}` gives unit `{unit}` twice; {ACCEPTED}")]
    RepeatedUnit {
        /// The input.
        input: String,
        /// The unit.
        unit: char,
    },
    /// A unit after a smaller one (`30m1h`).
    #[error("`{input}`: unit `{unit}` comes after a smaller unit; {ACCEPTED}")]
    OutOfOrder {
        /// The input.
        input: String,
        /// The unit out of place.
        unit: char,
    },
    /// More seconds than a `u64` holds.
    #[error("`{input}` is too large (more than {} seconds)", u64::MAX)]
    TooLarge {
        /// The input.
        input: String,
    },
}

fn quoted(input: &str) -> String {
    input.chars().take(MAX_QUOTED).collect()
}

/// Parses a duration in the grammar of this module.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let input = || quoted(text);
    if text.starts_with(['-', '+']) {
        return Err(DurationError::Sign { input: input() });
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| DurationError::TooLarge { input: input() });
    }
    let mut total: u64 = 0;
    // Index into UNITS of the smallest unit seen so far; the next must be smaller still.
    let mut next_allowed = 0;
    let mut seen = [false; UNITS.len()];
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let Some((index, &(_, secs))) = UNITS.iter().enumerate().find(|(_, (u, _))| *u == c) else {
            return Err(DurationError::UnknownUnit { input: input(), unit: c });
        };
        if number.is_empty() {
            return Err(DurationError::MissingNumber { input: input(), unit: c });
        }
        if index < next_allowed {
            return Err(if seen[index] {
                DurationError::RepeatedUnit { input: input(), unit: c }
            } else {
                DurationError::OutOfOrder { input: input(), unit: c }
            });
        }
        let too_large = || DurationError::TooLarge { input: input() };
        let n: u64 = number.parse().map_err(|_| too_large())?;
        total = n.checked_mul(secs).and_then(|s| total.checked_add(s)).ok_or_else(too_large)?;
        number.clear();
        seen[index] = true;
        next_allowed = index + 1;
    }
    if !number.is_empty() {
        return Err(DurationError::MissingUnit { input: input(), number });
    }
    Ok(Duration::from_secs(total))
}

/// A duration that prints in the canonical compound form: the non-zero units from largest to
/// smallest (`1d2h`, `1h30m`, `45s`), or `0s` for zero. Fractions of a second are not printed: vouch's
/// durations are whole seconds. Parses with [`parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Compound(pub Duration);

impl fmt::Display for Compound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0.as_secs();
        if rest == 0 {
            return f.write_str("0s");
        }
        for (unit, secs) in UNITS {
            let n = rest / secs;
            if n > 0 {
                write!(f, "{n}{unit}")?;
            }
            rest %= secs;
        }
        Ok(())
    }
}

impl FromStr for Compound {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepted_forms() {
        let cases: &[(&str, u64)] = &[
            ("600", 600),
            ("0", 0),
            ("0s", 0),
            ("90s", 90),
            ("5m", 300),
            ("1h", 3_600),
            ("2d", 172_800),
            ("1h30m", 5_400),
            ("1h0m30s", 3_630),
            ("1d2h3m4s", 93_784),
            ("1d30s", 86_430),
            ("90m", 5_400),
            ("007s", 7),
            (" 10m\n", 600),
            ("18446744073709551615", u64::MAX),
            ("18446744073709551615s", u64::MAX),
            ("213503982334601d", 213_503_982_334_601 * 86_400),
        ];
        for (input, secs) in cases {
            assert_eq!(parse(input), Ok(Duration::from_secs(*secs)), "{input:?}");
        }
    }

    #[test]
    fn refused_forms() {
        use DurationError::*;
        let s = |x: &str| x.to_owned();
        let cases: Vec<(&str, DurationError)> = vec![
            ("", Empty),
            ("   ", Empty),
            ("h", MissingNumber { input: s("h"), unit: 'h' }),
            ("1hm", MissingNumber { input: s("1hm"), unit: 'm' }),
            ("1h30", MissingUnit { input: s("1h30"), number: s("30") }),
            ("-5m", Sign { input: s("-5m") }),
            ("+5m", Sign { input: s("+5m") }),
            ("-5", Sign { input: s("-5") }),
            ("5y", UnknownUnit { input: s("5y"), unit: 'y' }),
            ("1H", UnknownUnit { input: s("1H"), unit: 'H' }),
            ("1.5h", UnknownUnit { input: s("1.5h"), unit: '.' }),
            ("1h 30m", UnknownUnit { input: s("1h 30m"), unit: ' ' }),
            ("30m1h", OutOfOrder { input: s("30m1h"), unit: 'h' }),
            ("1s1d", OutOfOrder { input: s("1s1d"), unit: 'd' }),
            ("1m2m", RepeatedUnit { input: s("1m2m"), unit: 'm' }),
            ("1h1h", RepeatedUnit { input: s("1h1h"), unit: 'h' }),
            ("18446744073709551616", TooLarge { input: s("18446744073709551616") }),
            ("213503982334602d", TooLarge { input: s("213503982334602d") }),
            ("99999999999999999999d", TooLarge { input: s("99999999999999999999d") }),
            ("1s1s", RepeatedUnit { input: s("1s1s"), unit: 's' }),
            ("213503982334601d8h", TooLarge { input: s("213503982334601d8h") }),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input), Err(want), "{input:?}");
        }
    }

    #[test]
    fn ms_is_not_milliseconds() {
        // `10ms` is not milliseconds: `m` then `s` with no number before it.
        assert!(matches!(parse("10ms"), Err(DurationError::MissingNumber { unit: 's', .. })));
    }

    #[test]
    fn errors_quote_the_input_and_show_the_form() {
        for input in ["h", "1h30", "-5m", "5y", "30m1h", "1m2m", "99999999999999999999d", ""] {
            let msg = parse(input).unwrap_err().to_string();
            assert!(msg.contains(&format!("`{input}`")) || input.is_empty(), "{msg}");
            if !input.starts_with('9') {
                assert!(msg.contains("`1h30m`"), "{msg}");
            }
        }
        let long = "x".repeat(1000);
        assert!(parse(&long).unwrap_err().to_string().len() < 400, "long input is not echoed whole");
    }

    #[test]
    fn canonical_display() {
        let cases: &[(u64, &str)] = &[
            (0, "0s"),
            (1, "1s"),
            (90, "1m30s"),
            (600, "10m"),
            (3_600, "1h"),
            (3_630, "1h30s"),
            (5_400, "1h30m"),
            (86_400, "1d"),
            (93_784, "1d2h3m4s"),
        ];
        for (secs, want) in cases {
            assert_eq!(Compound(Duration::from_secs(*secs)).to_string(), *want);
        }
        assert_eq!(Compound(Duration::from_millis(1_500)).to_string(), "1s", "fractions are dropped");
        assert_eq!("1h0m30s".parse::<Compound>().map(|c| c.to_string()), Ok("1h30s".to_owned()));
    }

    proptest! {
        #[test]
        fn display_then_parse_round_trips(secs in any::<u64>()) {
            let d = Duration::from_secs(secs);
            prop_assert_eq!(parse(&Compound(d).to_string()), Ok(d));
        }

        #[test]
        fn plain_seconds_round_trip(secs in any::<u64>()) {
            prop_assert_eq!(parse(&secs.to_string()), Ok(Duration::from_secs(secs)));
        }

        #[test]
        fn never_panics(input in ".{0,40}") {
            let _ = parse(&input);
        }
    }
}
