//! Money is integer cents everywhere inside (events, the database); the
//! APIs show it in major units. This is the one conversion.

/// Money in major units (a JSON number) from integer cents.
pub fn major_units(cents: i64) -> f64 {
    cents as f64 / 100.0
}

#[cfg(test)]
mod tests {
    use super::major_units;

    #[test]
    fn cents_become_major_units() {
        assert_eq!(major_units(1999), 19.99);
        assert_eq!(major_units(0), 0.0);
        assert_eq!(major_units(-250), -2.5);
    }
}
