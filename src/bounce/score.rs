//! The soft-bounce score: what a soft bounce adds, how the score fades with
//! time, what a delivery takes off, and when it is enough to stop mailing.
//! Pure arithmetic over a score and unix times; `store::bounces` keeps the
//! score and calls these.
//!
//! The rules:
//! - Each soft bounce from a campaign not counted before adds
//!   [`SOFT_BOUNCE`] (1.0). A hard bounce does not score: it bounces at once.
//! - The score halves every `half_life` seconds (`soft_window_days`):
//!   exponential decay, computed when the score is read or changed from the
//!   score stored and the time it was computed, so nothing has to rewrite it
//!   as days pass.
//! - A successful delivery halves it. A delivery the server accepted and
//!   bounced later was no success: its bounce adds back what the halving
//!   took ([`undo_delivery`]), so a mailbox that is full on every campaign
//!   still climbs instead of settling at 2.
//! - The person is bounced when the score, rounded to one decimal as
//!   `subscribers show` prints it, reaches `soft_limit`.
//!
//! What that means with the defaults (limit 3, 30 days): three soft bounces
//! within a few hours bounce a person, a soft bounce on every weekly
//! campaign does so at the fourth (1, 1.85, 2.57, 3.19), and soft bounces
//! spread more than `soft_window_days` apart never reach a limit of 3 or
//! more: each earlier one has at least halved, so the score stays under
//! 1 + 1/2 + 1/4 + ... = 2.

/// What one soft bounce adds to the score.
pub const SOFT_BOUNCE: f64 = 1.0;

/// Scores below this print as 0.0 and are forgotten.
pub const NEGLIGIBLE: f64 = 0.05;

/// `score`, computed at `computed_at`, as it stands at `now`: halved every
/// `half_life` seconds. A `now` before `computed_at` (a clock set back)
/// leaves it unchanged rather than growing it.
pub fn decayed(score: f64, computed_at: i64, now: i64, half_life: i64) -> f64 {
    let elapsed = now.saturating_sub(computed_at).max(0) as f64;
    score * 0.5f64.powf(elapsed / half_life.max(1) as f64)
}

/// The score after a soft bounce, given the score as it stands now.
pub fn after_soft_bounce(score_now: f64) -> f64 {
    score_now + SOFT_BOUNCE
}

/// The score after a successful delivery, given the score as it stands now.
pub fn after_delivery(score_now: f64) -> f64 {
    score_now / 2.0
}

/// The score now when a delivery that halved it turns out to have bounced
/// after all: the halving at `halved_at` took away as much as it left
/// (`halved_to`), and that much, decayed since, is added back. Exact
/// whatever came between, since the decay is linear in the score.
pub fn undo_delivery(
    score_now: f64,
    halved_to: f64,
    halved_at: i64,
    now: i64,
    half_life: i64,
) -> f64 {
    score_now + decayed(halved_to, halved_at, now, half_life)
}

/// Whether `score` has reached `limit`, compared at the one decimal people
/// see: a score printed as "3.0 of 3" is at the limit.
pub fn reaches(score: f64, limit: i64) -> bool {
    (score * 10.0).round() >= (limit as f64) * 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    const HALF_LIFE: i64 = 30 * DAY;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn halves_every_half_life() {
        assert!(close(decayed(2.0, 0, HALF_LIFE, HALF_LIFE), 1.0));
        assert!(close(decayed(2.0, 0, 2 * HALF_LIFE, HALF_LIFE), 0.5));
        assert!(close(decayed(1.0, 100, 100, HALF_LIFE), 1.0));
        assert!(close(decayed(1.0, 0, 15 * DAY, HALF_LIFE), 0.5f64.sqrt()));
        // A clock set back never grows the score.
        assert!(close(decayed(1.0, 10 * DAY, 0, HALF_LIFE), 1.0));
    }

    #[test]
    fn delivery_halving_commutes_with_decay() {
        let first = after_delivery(decayed(1.6, 0, 7 * DAY, HALF_LIFE));
        let later = decayed(after_delivery(1.6), 0, 7 * DAY, HALF_LIFE);
        assert!(close(first, later));
    }

    #[test]
    fn undoing_a_delivery_restores_the_score_it_halved() {
        // 1.6 at day 0, delivered on day 2, a bounce from another campaign
        // on day 3, then the delivery of day 2 bounces on day 5.
        let halved_to = after_delivery(decayed(1.6, 0, 2 * DAY, HALF_LIFE));
        let day3 = after_soft_bounce(decayed(halved_to, 2 * DAY, 3 * DAY, HALF_LIFE));
        let day5 = decayed(day3, 3 * DAY, 5 * DAY, HALF_LIFE);
        let undone = undo_delivery(day5, halved_to, 2 * DAY, 5 * DAY, HALF_LIFE);
        // As if the day-2 delivery had never counted.
        let never = decayed(
            after_soft_bounce(decayed(1.6, 0, 3 * DAY, HALF_LIFE)),
            3 * DAY,
            5 * DAY,
            HALF_LIFE,
        );
        assert!(close(undone, never), "{undone} {never}");
    }

    /// The score after soft bounces at `days`, each from another campaign.
    fn after_bounces(days: &[i64]) -> f64 {
        let mut score = 0.0;
        let mut at = 0;
        for &day in days {
            score = after_soft_bounce(decayed(score, at, day * DAY, HALF_LIFE));
            at = day * DAY;
        }
        score
    }

    #[test]
    fn three_at_once_reach_three() {
        let score = after_bounces(&[0, 0, 0]);
        assert!(close(score, 3.0));
        assert!(reaches(score, 3));
        // Seconds apart still prints as 3.0.
        let (mut s, mut at) = (0.0, 0);
        for t in [0, 10, 20] {
            s = after_soft_bounce(decayed(s, at, t, HALF_LIFE));
            at = t;
        }
        assert!(reaches(s, 3), "{s}");
    }

    #[test]
    fn weekly_bounces_reach_three_at_the_fourth() {
        assert!(!reaches(after_bounces(&[0, 7, 14]), 3));
        let fourth = after_bounces(&[0, 7, 14, 21]);
        assert!(reaches(fourth, 3), "{fourth}");
    }

    #[test]
    fn bounces_further_apart_than_the_window_stay_under_two() {
        let days: Vec<i64> = (0..50).map(|n| n * 31).collect();
        let score = after_bounces(&days);
        assert!(score < 2.0 && !reaches(score, 3), "{score}");
    }

    #[test]
    fn limit_compared_at_one_decimal() {
        assert!(reaches(2.96, 3));
        assert!(!reaches(2.94, 3));
        assert!(reaches(1.0, 1));
    }
}
