//! Collects one keyset page from a row stream, bounded in rows and in bytes: rows are read one at
//! a time and reading stops as soon as the page is full, so a page of large rows never holds
//! more than its byte budget and one row in memory (the rest of the result is discarded by the
//! connection as it arrives).

use futures_util::{Stream, TryStreamExt};

use super::StoreError;

/// How much one page may hold: `rows` items, and items whose `size` (in bytes, however the
/// caller will send them) adds up to at most `bytes`. The first item always fits, however large,
/// so that a page always makes progress.
#[derive(Debug, Clone, Copy)]
pub struct PageBound<T> {
    pub rows: usize,
    pub bytes: usize,
    pub size: fn(&T) -> usize,
}

/// The items of a page, converted from rows by `convert`, and whether more follow: the query
/// asked for one row more than `bound.rows`, and either that row arrived or an item did not fit
/// in the byte budget (it starts the next page).
pub async fn collect_page<R, T, S, E>(
    rows: S,
    bound: &PageBound<T>,
    convert: impl Fn(R) -> Result<T, StoreError>,
) -> Result<(Vec<T>, bool), StoreError>
where
    S: Stream<Item = Result<R, E>>,
    StoreError: From<E>,
{
    let mut rows = std::pin::pin!(rows);
    let mut items = Vec::new();
    let mut used = 0usize;
    while let Some(row) = rows.try_next().await? {
        if items.len() == bound.rows {
            return Ok((items, true));
        }
        let item = convert(row)?;
        let size = (bound.size)(&item);
        if !items.is_empty() && used.saturating_add(size) > bound.bytes {
            return Ok((items, true));
        }
        used = used.saturating_add(size);
        items.push(item);
    }
    Ok((items, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn page(sizes: &[usize], rows: usize, bytes: usize) -> (Vec<usize>, bool) {
        let stream = futures_util::stream::iter(
            sizes
                .iter()
                .map(|&size| Ok::<_, StoreError>(size))
                .collect::<Vec<_>>(),
        );
        let bound = PageBound {
            rows,
            bytes,
            size: |item: &usize| *item,
        };
        collect_page(stream, &bound, Ok).await.unwrap()
    }

    #[tokio::test]
    async fn a_page_ends_at_its_row_count_or_its_byte_budget() {
        // The query reads rows + 1: the extra row only says that more follow.
        assert_eq!(page(&[1, 1, 1], 2, 100).await, (vec![1, 1], true));
        assert_eq!(page(&[1, 1], 2, 100).await, (vec![1, 1], false));
        // The third item would pass 10 bytes: the page ends before it.
        assert_eq!(page(&[4, 4, 4, 4], 10, 10).await, (vec![4, 4], true));
        // Exactly the budget fits.
        assert_eq!(page(&[5, 5], 10, 10).await, (vec![5, 5], false));
        // The first item always fits, however large; the next page starts after it.
        assert_eq!(page(&[50, 1], 10, 10).await, (vec![50], true));
        assert_eq!(page(&[50], 10, 10).await, (vec![50], false));
        assert_eq!(page(&[], 10, 10).await, (vec![], false));
    }
}
