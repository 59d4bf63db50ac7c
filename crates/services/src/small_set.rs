//! A set kept as a sorted vector: for the many sets of the service tables that hold one or two
//! members (the services claiming a frontend, the slices of a service), where a `BTreeSet`
//! would allocate a whole B-tree node (hundreds of bytes) for each.

/// A sorted, duplicate-free vector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmallSet<T>(Vec<T>);

impl<T> Default for SmallSet<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<T: Ord> SmallSet<T> {
    /// Adds `value`; false when it was there.
    pub fn insert(&mut self, value: T) -> bool {
        match self.0.binary_search(&value) {
            Ok(_) => false,
            Err(at) => {
                self.0.insert(at, value);
                true
            }
        }
    }

    /// Removes `value`; false when it was not there.
    pub fn remove(&mut self, value: &T) -> bool {
        match self.0.binary_search(value) {
            Ok(at) => {
                self.0.remove(at);
                if self.0.len() * 2 < self.0.capacity() {
                    self.0.shrink_to_fit();
                }
                true
            }
            Err(_) => false,
        }
    }

    /// The least member.
    pub fn first(&self) -> Option<&T> {
        self.0.first()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The members in order.
    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }
}

impl<'a, T> IntoIterator for &'a SmallSet<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::SmallSet;

    #[test]
    fn members_stay_sorted_and_unique() {
        let mut set = SmallSet::default();
        assert!(set.insert("b") && set.insert("a") && set.insert("c"));
        assert!(!set.insert("a"), "a member is not added twice");
        assert_eq!(set.iter().copied().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(set.first(), Some(&"a"));
        assert!(set.remove(&"a") && !set.remove(&"a"));
        assert_eq!((set.first(), set.len()), (Some(&"b"), 2));
        assert!(set.remove(&"b") && set.remove(&"c") && set.is_empty());
    }
}
