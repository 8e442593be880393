//! Benchmark: one access decision with 1,000 rules (target: under 2 µs).
//!
//!     cargo bench --bench acl
//!
//! The rule set is shaped like a shared registry: a rule per team namespace, the
//! personal-namespace rule (`${user}/**`), a public read rule and a few wildcard rules
//! that every decision must try. Prints ns per decision (`Policy::allows`, what the
//! request path calls), best of five runs.
use registry_guard::acl::glob::Pattern;
use registry_guard::acl::{Policy, Rule, TagProtection, Who};
use registry_guard::auth::Identity;
use registry_guard::registry::Actions;
use std::hint::black_box;
use std::time::Instant;

fn rule(label: String, repo: &str, who: Who, actions: Actions) -> Rule {
    Rule {
        label,
        repos: vec![Pattern::repo(repo).unwrap()],
        who,
        actions,
    }
}

fn main() {
    let mut rules = Vec::new();
    for i in 0..990 {
        let who = Who {
            groups: vec![format!("team-{i}")],
            ..Who::default()
        };
        rules.push(rule(
            format!("team-{i}"),
            &format!("team-{i}/**"),
            who,
            Actions::ALL,
        ));
    }
    let everyone = Who {
        users: vec!["*".into()],
        ..Who::default()
    };
    rules.push(rule(
        "own".into(),
        "${user}/**",
        everyone.clone(),
        Actions::ALL,
    ));
    rules.push(rule(
        "public".into(),
        "public/**",
        Who {
            anonymous: true,
            ..everyone.clone()
        },
        Actions::PULL,
    ));
    for i in 0..8 {
        rules.push(rule(
            format!("wild-{i}"),
            &format!("*/mirror-{i}/*"),
            everyone.clone(),
            Actions::PULL,
        ));
    }
    assert_eq!(rules.len(), 1000);
    let protections = vec![TagProtection {
        label: "protected".into(),
        repos: vec![Pattern::repo("**").unwrap()],
        tags: vec![Pattern::tag("latest").unwrap(), Pattern::tag("v*").unwrap()],
        except: Who::default(),
    }];
    let policy = Policy::new(
        rules,
        Who {
            groups: vec!["ops".into()],
            ..Who::default()
        },
        protections,
    );
    let member = Identity::User {
        name: "alice".into(),
        groups: vec!["team-517".into()],
    };
    let admin = Identity::User {
        name: "root".into(),
        groups: vec!["ops".into()],
    };
    let push = Actions::PUSH.union(Actions::PULL);

    let cases: [(&str, &Identity, &str, bool); 4] = [
        (
            "team namespace, allowed",
            &member,
            "team-517/service/api",
            true,
        ),
        ("own namespace, allowed", &member, "alice/tools", true),
        ("other team, denied", &member, "team-518/service/api", false),
        ("admin", &admin, "team-3/x", true),
    ];
    println!("access decision with {} rules", policy.rules().len());
    for (name, id, repo, want) in cases {
        assert_eq!(policy.decide(id, repo, push).allowed, want, "{name}");
        assert_eq!(policy.allows(id, repo, push), want, "{name}");
        let iters = 200_000u32;
        let best = (0..5)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..iters {
                    black_box(policy.allows(black_box(id), black_box(repo), push));
                }
                t.elapsed().as_nanos() as f64 / f64::from(iters)
            })
            .fold(f64::INFINITY, f64::min);
        println!("  {name:<28} {best:>8.0} ns/decision");
    }
}
