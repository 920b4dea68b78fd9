//! "Did you mean": the known name closest to one that was misspelt. One rule
//! for every suggestion bulletin makes (list slugs in front matter and
//! `--list` flags, placeholder keys), so they all judge "close" alike. No IO.

/// The candidate closest to `word`, if it is near enough to be a typo of it:
/// at most one edit (an adjacent swap counts as one) per three characters,
/// and always one, compared without case. A key written in another case
/// style (`firstName`, `First Name`) matches its snake_case form exactly.
/// Ties go to the first candidate in alphabetical order, so the suggestion
/// does not depend on the order the candidates came in.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word_lower = word.to_lowercase();
    let snake = crate::import::attribute_key(word);
    candidates
        .into_iter()
        .filter(|c| *c != word)
        .filter_map(|c| {
            let distance = if c == snake {
                0
            } else {
                strsim::osa_distance(&word_lower, &c.to_lowercase())
            };
            let longest = word.chars().count().max(c.chars().count());
            (distance <= (longest / 3).max(1)).then_some((distance, c))
        })
        .min()
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::closest;

    #[test]
    fn typos_find_the_name_they_meant() {
        let keys = ["email", "first_name", "name", "city"];
        assert_eq!(closest("nmae", keys), Some("name"));
        assert_eq!(closest("nam", keys), Some("name"));
        assert_eq!(closest("frist_name", keys), Some("first_name"));
        assert_eq!(closest("firstName", keys), Some("first_name"));
        assert_eq!(closest("First Name", keys), Some("first_name"));
        assert_eq!(closest("emial", keys), Some("email"));
        assert_eq!(
            closest("ebuletin", ["ebulletin", "partners"]),
            Some("ebulletin")
        );
    }

    #[test]
    fn far_or_equal_names_suggest_nothing() {
        assert_eq!(closest("postcode", ["name", "email", "city"]), None);
        assert_eq!(closest("x", ["name"]), None);
        assert_eq!(closest("name", ["name"]), None);
        assert_eq!(closest("news", Vec::<&str>::new()), None);
    }

    #[test]
    fn ties_do_not_depend_on_order() {
        assert_eq!(closest("cat", ["cut", "bat"]), Some("bat"));
        assert_eq!(closest("cat", ["bat", "cut"]), Some("bat"));
    }
}
