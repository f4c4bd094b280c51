//! Property test of the whole pipeline: for random plans (topology, slots, merchants, bounds,
//! spreads, variants), generation followed by verification finds nothing wrong, every envelope
//! id is unique, every amount is within its bounds, and every merchant's money and count are
//! exact.

use std::collections::HashSet;

use hongbao::gen::{generate, GenOptions};
use hongbao::manifest::BatchConfig;
use hongbao::plan::Plan;
use hongbao::ticket::{Keyring, ShardFile};
use hongbao::verify::{verify, VerifyOptions};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct MerchantSpec {
    count: u64,
    min: u64,
    width: u64,
    fill: f64,
    weights: Vec<u64>,
}

fn merchant(slots: usize) -> impl Strategy<Value = MerchantSpec> {
    (
        1u64..3000,
        1u64..500,
        0u64..2000,
        0.0f64..=1.0,
        proptest::collection::vec(0u64..4, slots),
    )
        .prop_map(|(count, min, width, fill, weights)| MerchantSpec {
            count,
            min,
            width,
            fill,
            weights,
        })
}

fn plan_text(hosts: &[u32], slots: usize, merchants: &[MerchantSpec], key_cap: u64) -> String {
    let mut t = format!("[event]\nname = \"prop\"\nkey_cap_cents = {key_cap}\n");
    for (i, cores) in hosts.iter().enumerate() {
        t += &format!(
            "\n[[topology.host]]\nname = \"h{i}\"\npark = \"p{}\"\ncores = {cores}\n",
            i % 2
        );
    }
    for s in 0..slots {
        t += &format!(
            "\n[[slot]]\nname = \"s{s}\"\nstart = \"2027-02-06T2{s}:00:00Z\"\nend = \"2027-02-06T2{s}:30:00Z\"\n"
        );
    }
    for (i, m) in merchants.iter().enumerate() {
        let max = m.min + m.width;
        let budget = m.count * m.min + ((m.count * m.width) as f64 * m.fill) as u64;
        t += &format!(
            "\n[[merchant]]\nid = {}\nname = \"m{i}\"\nkind = \"logo\"\nbudget_cents = {budget}\n\
             count = {}\nmin_cents = {}\nmax_cents = {max}\n",
            100 + i,
            m.count,
            m.min
        );
        if m.weights.iter().any(|&w| w > 0) {
            let spread: Vec<String> = m
                .weights
                .iter()
                .enumerate()
                .map(|(s, w)| format!("s{s} = {w}"))
                .collect();
            t += &format!("slots = {{ {} }}\n", spread.join(", "));
        }
    }
    t
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn generated_events_always_verify(
        hosts in proptest::collection::vec(1u32..3, 2..4),
        slots in 1usize..4,
        merchants in (1usize..4).prop_flat_map(|s| proptest::collection::vec(merchant(s), 1..5).prop_map(move |m| (s, m))),
        variants in 1u32..3,
        key_cap_extra in 0u64..100_000,
        seed: u64,
    ) {
        let (slot_count, merchants) = merchants;
        let slots = slots.min(slot_count);
        let merchants: Vec<MerchantSpec> = merchants
            .into_iter()
            .map(|mut m| { m.weights.truncate(slots); m })
            .collect();
        let key_cap = 2_500 + key_cap_extra;
        let text = plan_text(&hosts, slots, &merchants, key_cap);
        let mut plan = Plan::from_toml(&text).expect("generated plans are valid");
        plan.expand_variants(variants).unwrap();

        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("event");
        let keyring_path = tmp.path().join("event.keyring");
        generate(&plan, &GenOptions {
            out: out.clone(),
            keyring: keyring_path.clone(),
            seed: Some(seed),
            threads: 2,
            force: false,
            progress: false,
        }).unwrap();
        let report = verify(&VerifyOptions {
            dir: out.clone(),
            keyring: keyring_path.clone(),
            plan: None,
            threads: 2,
            progress: false,
            findings_max: 20,
            regenerate: true,
        }).unwrap();
        prop_assert!(report.ok(), "{:#?}", report.findings.shown);
        prop_assert_eq!(report.envelopes, plan.total_envelopes() * variants as u64);
        prop_assert_eq!(report.amount_cents, plan.total_cents() * variants as u64);

        // Independently of verify: unique ids, bounds, exact merchant totals, key caps.
        let (ring, _) = Keyring::load(&keyring_path).unwrap();
        let mut ids = HashSet::new();
        for allocation in plan.allocate().unwrap() {
            let dir = out.join(&plan.variants[allocation.variant].name);
            let batches = BatchConfig::load(&dir.join("batches.toml")).unwrap();
            let mut per_merchant = vec![(0u64, 0u64); plan.merchants.len()];
            let mut per_key = std::collections::HashMap::<u16, u64>::new();
            for shard in &allocation.shards {
                let file = ShardFile::open(&dir.join(shard.relative_path(&plan))).unwrap();
                for record in file.records() {
                    let t = record.open(&ring).unwrap();
                    prop_assert!(ids.insert(t.envelope_id));
                    let b = &batches.batches[t.batch_id as usize - 1];
                    prop_assert!((b.min_cents..=b.max_cents).contains(&(t.amount_cents as u64)));
                    let m = allocation.batches[t.batch_id as usize - 1].merchant;
                    per_merchant[m].0 += 1;
                    per_merchant[m].1 += t.amount_cents as u64;
                    *per_key.entry(t.key_id).or_default() += t.amount_cents as u64;
                }
            }
            for (m, got) in plan.merchants.iter().zip(&per_merchant) {
                prop_assert_eq!(*got, (m.count, m.budget_cents));
            }
            prop_assert!(per_key.values().all(|&c| c <= key_cap));
        }
    }
}
