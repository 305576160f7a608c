//! Three replicas of a shopping cart (item → quantity), edited concurrently
//! while apart, then brought together by exchanging deltas in different
//! orders, with duplicates. Every replica ends with the same cart.
//!
//! Run: `cargo run -p converge-crdt --example shopping_cart`

use converge_crdt::{CounterStore, Crdt, ORMap, ReplicaId, codec};

type Cart = ORMap<String, CounterStore>;

struct Replica {
    name: &'static str,
    id: ReplicaId,
    cart: Cart,
    /// Deltas produced here, to be shipped to the others.
    outbox: Vec<Cart>,
}

impl Replica {
    fn new(name: &'static str, id: u64) -> Self {
        Self {
            name,
            id: ReplicaId::from_u64(id),
            cart: Cart::new(),
            outbox: Vec::new(),
        }
    }

    fn add(&mut self, item: &str, qty: i64) {
        let delta = self
            .cart
            .update(self.id, item.to_string(), |q, m| q.add(m, qty));
        println!("  {:<6} {:+} {item}", self.name, qty);
        self.outbox.push(delta);
    }

    fn remove(&mut self, item: &str) {
        let delta = self.cart.remove(&item.to_string());
        println!("  {:<6} removes {item}", self.name);
        self.outbox.push(delta);
    }

    fn receive(&mut self, deltas: &[Cart]) {
        for d in deltas {
            self.cart.merge(d);
        }
    }

    fn show(&self) -> String {
        let items: Vec<String> = self
            .cart
            .iter()
            .map(|(item, qty)| format!("{item} × {}", qty.value()))
            .collect();
        format!("{:<6} {{ {} }}", self.name, items.join(", "))
    }
}

fn main() {
    let mut alice = Replica::new("alice", 1);
    let mut bob = Replica::new("bob", 2);
    let mut carol = Replica::new("carol", 3);

    println!("1. Alice fills the cart; everyone syncs.");
    alice.add("apples", 3);
    alice.add("bread", 1);
    alice.add("coffee", 2);
    let shipped = std::mem::take(&mut alice.outbox);
    bob.receive(&shipped);
    carol.receive(&shipped);

    println!("2. Offline, all three edit at once:");
    bob.remove("coffee"); // Bob thinks coffee is not needed...
    alice.add("coffee", 1); // ...while Alice adds one more: the update wins.
    carol.remove("bread"); // Carol removes bread; nobody touched it concurrently.
    carol.add("dates", 12);
    bob.add("apples", -1);
    alice.add("apples", 2);

    println!("3. Back online: deltas arrive in different orders, some twice.");
    let (a, b, c) = (
        std::mem::take(&mut alice.outbox),
        std::mem::take(&mut bob.outbox),
        std::mem::take(&mut carol.outbox),
    );
    alice.receive(&[c.clone(), b.clone(), c.clone()].concat());
    bob.receive(&[a.clone(), c.clone(), a.clone()].concat());
    carol.receive(&[b.clone(), a.clone(), b.clone()].concat());

    println!("4. Converged:");
    for r in [&alice, &bob, &carol] {
        println!("  {}", r.show());
    }
    let same = alice.cart == bob.cart && bob.cart == carol.cart;
    let bytes = codec::encode(&alice.cart);
    let same_bytes = bytes == codec::encode(&bob.cart) && bytes == codec::encode(&carol.cart);
    println!(
        "  identical state: {same}; identical encoding: {same_bytes} ({} bytes)",
        bytes.len()
    );
    let qty = |item: &str| alice.cart.get(&item.to_string()).map(|q| q.value());
    assert_eq!(qty("apples"), Some(4), "3 - 1 + 2");
    assert_eq!(qty("bread"), None, "removed");
    assert!(
        qty("coffee").is_some(),
        "a concurrent update wins over remove"
    );
    assert_eq!(qty("dates"), Some(12));
    if !(same && same_bytes) {
        eprintln!("replicas diverged");
        std::process::exit(1);
    }
}
