//! The order in which a part measures its configurations, repetition by repetition.
//!
//! A window can leave something behind that the next window pays for. Measured: in part 2, the
//! window right after the kernel had answered a SYN flood itself (no filter: thousands of
//! request sockets, SYN cookies, SYN-ACKs) cost whichever configuration came next up to 1.5×
//! its usual CPU per SYN. With the same order in every repetition, the same configuration
//! came next every time and carried that in every pair it was compared in: limiter against the
//! bare drop measured 1.49× in that order and 0.93× in the reverse one, on the same code. More
//! repetitions do not remove a bias that every repetition repeats.
//!
//! So every repetition takes the next row of a balanced Latin square (a Williams design): over
//! a full square each configuration is measured once in every position and comes right after
//! every other configuration equally often, so what a window leaves behind falls on all of them
//! alike and the paired comparisons carry it only as noise.

/// The indices `0..n`, in the order repetition `rep` measures them.
///
/// For an even `n` the square has `n` rows; for an odd `n`, `2n` (the first `n` rows and their
/// reverses), the smallest that balances which configuration follows which. Repetitions past
/// the square start it again.
pub fn balanced(n: usize, rep: usize) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    // The first row: 0, 1, n-1, 2, n-2, 3, ... Every difference between neighbours (mod n)
    // occurs once, so shifting the row by 1, 2, ... pairs every configuration with every other
    // as its successor exactly once.
    let first: Vec<usize> = (0..n)
        .map(|j| {
            if j % 2 == 1 {
                j.div_ceil(2)
            } else {
                (n - j / 2) % n
            }
        })
        .collect();
    let row = rep % rows(n);
    let shift = row % n;
    let mut order: Vec<usize> = first.iter().map(|c| (c + shift) % n).collect();
    if row >= n {
        order.reverse();
    }
    order
}

/// Repetitions in one full square of `n` configurations.
pub fn rows(n: usize) -> usize {
    if n.is_multiple_of(2) { n } else { 2 * n }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::{balanced, rows};

    fn square(n: usize) -> Vec<Vec<usize>> {
        (0..rows(n)).map(|r| balanced(n, r)).collect()
    }

    #[test]
    fn every_row_is_a_permutation() {
        for n in 1..=9 {
            for row in square(n) {
                let mut sorted = row.clone();
                sorted.sort();
                assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "n = {n}: {row:?}");
            }
        }
    }

    #[test]
    fn every_configuration_follows_every_other_equally_often() {
        for n in 2..=9 {
            let mut follows: HashMap<(usize, usize), usize> = HashMap::new();
            for row in square(n) {
                for pair in row.windows(2) {
                    *follows.entry((pair[0], pair[1])).or_default() += 1;
                }
            }
            // Every ordered pair of distinct configurations, the same number of times.
            assert_eq!(follows.len(), n * (n - 1), "n = {n}: {follows:?}");
            let counts: Vec<usize> = follows.values().copied().collect();
            assert!(
                counts.iter().all(|c| *c == counts[0]),
                "n = {n}: {follows:?}"
            );
        }
    }

    #[test]
    fn every_configuration_takes_every_position() {
        for n in 1..=9 {
            let rows = square(n);
            for position in 0..n {
                let mut seen: Vec<usize> = rows.iter().map(|r| r[position]).collect();
                seen.sort();
                seen.dedup();
                assert_eq!(seen.len(), n, "n = {n}, position {position}");
            }
        }
    }

    #[test]
    fn the_first_repetition_keeps_the_parts_own_order_first() {
        // The first configuration listed (each part lists the one it is about first) opens.
        assert_eq!(balanced(6, 0), vec![0, 1, 5, 2, 4, 3]);
        assert_eq!(balanced(6, 6), balanced(6, 0));
        assert_eq!(balanced(3, 3), vec![2, 1, 0]);
        assert!(balanced(0, 4).is_empty());
    }
}
