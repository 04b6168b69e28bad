//! stepgate: step-up authentication (PIN, email OTP) as a reverse proxy in
//! front of unmodified web apps. This file is the command line only.
// One audited exception: the allocator call in `release_memory` below.
#![deny(unsafe_code)]

use std::path::{Path, PathBuf};

use std::process::ExitCode;
use stepgate::auth::{first_factor, tokens};
use stepgate::config::spans;
use stepgate::runtime::{demo, server};
use stepgate::util::clock;
use stepgate::{config, policy, templates};

use clap::{Parser, Subcommand};

/// mimalloc: Pingora allocates per request (headers, buffers); glibc malloc
/// was 13% of the proxy's profile under load, and mimalloc returns idle
/// connections' memory better (benches/RESULTS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// After each PIN hash, on the hashing thread: return freed memory (the 19 MiB
/// Argon2 block) to the OS now. mimalloc purges freed memory lazily, on the
/// thread's next allocations, which an idle hashing thread never makes
/// (measured: +19 MiB resident after one PIN check without this).
#[allow(unsafe_code)]
fn release_memory() {
    // SAFETY: mi_collect takes no pointers and may be called on any thread
    // at any time; `force` only makes it purge without waiting.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// mimalloc 3's `arena_eager_commit` (its `mi_option_e` value in
/// `c_src/mimalloc/v3/include/mimalloc.h`; the Rust bindings name v2's).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Commit the allocator's arenas as they are used, not all at once: on
/// Linux (overcommit) mimalloc commits a whole arena up front, and
/// transparent huge pages then make most of it resident. Measured with the
/// embedded store: 41 -> 26 MiB at start, 74 -> 60 MiB with 1,000 idle
/// connections, the same req/s (benches/RESULTS.md). `MIMALLOC_*`
/// environment variables still override it. It must run before the first
/// allocation reserves the first arena, so it is a constructor, not a call
/// from `main` (where it changed nothing).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
#[used]
#[link_section = ".init_array"]
static TUNE_ALLOCATOR: extern "C" fn() = tune_allocator;

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
extern "C" fn tune_allocator() {
    extern "C" {
        fn getenv(name: *const std::ffi::c_char) -> *const std::ffi::c_char;
    }
    // SAFETY: getenv reads the environment the loader set up (nothing
    // writes it this early) and allocates nothing; mi_option_set sets a
    // process-wide option and takes no pointers.
    unsafe {
        if getenv(c"MIMALLOC_ARENA_EAGER_COMMIT".as_ptr()).is_null() {
            libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0)
        }
    }
}

#[derive(Parser)]
#[command(
    name = "stepgate",
    version,
    about = "Step-up authentication (PIN, email OTP) in front of any web app.",
    long_about = "stepgate is a reverse proxy that asks already signed-in users to confirm it is them (a PIN or an emailed code) before the routes your YAML policy protects, then forwards the request with identity headers the app can trust.\n\nStart with `stepgate demo`, then write a config and run `stepgate check -c gateway.yaml`."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway.
    Serve {
        /// The gateway config (YAML).
        #[arg(short, long)]
        config: PathBuf,
        /// Take over the listening sockets of a running stepgate (graceful upgrade).
        #[arg(short, long)]
        upgrade: bool,
    },
    /// Validate the config and every policy file; print problems as FILE:LINE:COL: message.
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Say which rule applies to a request and what it requires.
    Explain {
        #[arg(short, long)]
        config: PathBuf,
        /// HTTP method, e.g. GET.
        method: String,
        /// Full URL (https://app.example.com/admin) or a path (/admin).
        url: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Mint a first-factor token with the configured HS key (development and tests only).
    Token {
        #[arg(short, long)]
        config: PathBuf,
        /// Subject (user id).
        #[arg(long)]
        sub: String,
        /// Email address(es); the first is the primary one.
        #[arg(long)]
        email: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: i64,
        /// Session id (`sid`); random when left out.
        #[arg(long)]
        sid: Option<String>,
        /// Pretend the login happened this many seconds ago (`auth_time`).
        #[arg(long, default_value_t = 0)]
        login_age: i64,
        /// Username claim (`first_factor.claims.username`), for PIN recovery.
        #[arg(long)]
        username: Option<String>,
        /// Phone number claim (`first_factor.claims.phone`), for PIN recovery by SMS.
        #[arg(long)]
        phone: Option<String>,
    },
    /// Everything on one machine for a first look: gateway, embedded store, demo app.
    Demo {
        /// Where the gateway listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Where the demo app listens.
        #[arg(long, default_value = "127.0.0.1:8081")]
        app: String,
        /// Folder for the demo's config, keys and store (kept between runs).
        #[arg(long, default_value = "stepgate-demo")]
        dir: PathBuf,
        /// Where "signed in" comes from: `jwt` (a sign-in link sets a JWT
        /// cookie) or `session-check` (the demo app's own login form and
        /// session cookie, checked by asking the app, as for a legacy app).
        #[arg(long, default_value = "jwt", value_parser = ["jwt", "session-check"])]
        first_factor: String,
    },
    /// Helpdesk: see, unlock, reset and revoke a user, on the configured store.
    Admin {
        #[arg(short, long)]
        config: PathBuf,
        /// Print JSON (the API's shapes) instead of sentences.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        what: AdminCmd,
    },
    /// Store maintenance.
    #[command(subcommand)]
    Store(StoreCmd),
    /// Policy authoring tools: lint and test.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Serve only the built-in demo app (a real upstream for tests and trials).
    #[command(hide = true)]
    Upstream {
        #[arg(long)]
        listen: String,
        #[arg(long, default_value = "access_token")]
        cookie: String,
    },
}

#[derive(Subcommand)]
enum AdminCmd {
    /// One user: show, unlock, reset-pin (remove the PIN), revoke (step down everywhere).
    User {
        #[arg(value_parser = ["show", "unlock", "reset-pin", "revoke"])]
        action: String,
        /// The user's id (the access token's `sub`).
        sub: String,
    },
    /// Lift the lock on a client address (an office behind one NAT).
    Unlock {
        #[arg(long)]
        ip: String,
    },
    /// Every lock and suspension in force, users and addresses, on every gateway sharing the store.
    Locks,
}

#[derive(Subcommand)]
enum StoreCmd {
    /// Copy PIN records and verified email authenticators from one config's store to another's
    /// (e.g. embedded → redis), so users need not enroll again.
    Migrate {
        #[arg(long)]
        from: PathBuf,
        #[arg(long)]
        to: PathBuf,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Warn about shadowed, unreachable and risky rules (FILE:LINE:COL: warning: …).
    Lint {
        #[arg(short, long)]
        config: PathBuf,
        /// Exit 1 when there is any warning (for CI).
        #[arg(long)]
        deny_warnings: bool,
    },
    /// Run a YAML file of cases: `- { method: GET, url: "https://host/path", expect: { rule: admin, require: step_up } }`.
    Test {
        #[arg(short, long)]
        config: PathBuf,
        cases: PathBuf,
    },
}

fn print_diags(d: &[spans::Diagnostic]) {
    for d in d {
        eprintln!("{d}");
    }
}

fn load(config: &Path) -> Result<config::Settings, ExitCode> {
    config::load(config).map_err(|d| {
        print_diags(&d);
        ExitCode::from(1)
    })
}

fn main() -> ExitCode {
    let _ = stepgate::flows::pin::RELEASE_MEMORY.set(release_memory);
    let cli = Cli::parse();
    // Only commands that write to nothing but stdout: `admin` and `store`
    // talk to Redis or a gateway, and a Unix-socket write to a peer that
    // went away must be an error they report, not a silent death.
    if matches!(
        cli.cmd,
        Cmd::Check { .. } | Cmd::Explain { .. } | Cmd::Token { .. } | Cmd::Policy(_)
    ) {
        quiet_on_closed_pipe();
    }
    match run(cli.cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

/// A command whose output is piped into `head` ends quietly when the reader
/// goes, as Unix tools do, instead of panicking in `println!` (Rust ignores
/// SIGPIPE; the servers keep ignoring it, a closed socket is theirs to see).
#[allow(unsafe_code)]
fn quiet_on_closed_pipe() {
    // SAFETY: called from main before any thread starts; SIG_DFL is a valid
    // disposition and signal() takes no pointers.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("stepgate: {msg}");
    ExitCode::from(1)
}

fn run(cmd: Cmd) -> Result<(), ExitCode> {
    match cmd {
        Cmd::Serve { config, upgrade } => {
            let s = load(&config)?;
            server::init_logging(&s.log_level, s.log_json);
            server::run(
                &config,
                s,
                server::Extra {
                    demo_upstream: None,
                    upgrade,
                },
            )
            .map_err(fail)
        }
        Cmd::Check { config } => {
            let s = config::load(&config).map_err(|d| {
                print_diags(&d);
                // The policy's own problems too, when the config names it.
                if let Some(p) = config::policy_path_of(&config) {
                    if let Err(d) = policy::Policy::load(&p) {
                        print_diags(&d);
                    }
                }
                ExitCode::from(1)
            })?;
            let p = policy::Policy::load(&s.policy_path).map_err(|d| {
                print_diags(&d);
                ExitCode::from(1)
            })?;
            first_factor::Verifier::new(&s.first_factor).map_err(fail)?;
            templates::Pages::new(s.templates_dir.clone(), &s.site_title).map_err(fail)?;
            for w in policy::lint::encoding_warnings(&p) {
                println!("{w}");
            }
            println!(
                "{}: ok ({} rules from {} policy file(s), default: {})",
                config.display(),
                p.rules.len(),
                p.sources.len(),
                p.default.name()
            );
            Ok(())
        }
        Cmd::Explain {
            config,
            method,
            url,
            json,
        } => {
            let s = load(&config)?;
            let p = policy::Policy::load(&s.policy_path).map_err(|d| {
                print_diags(&d);
                ExitCode::from(1)
            })?;
            explain(&p, &method, &url, json)
        }
        Cmd::Token {
            config,
            sub,
            email,
            ttl,
            sid,
            login_age,
            username,
            phone,
        } => {
            let s = load(&config)?;
            let names = &s.first_factor.claims;
            let extra: Vec<(String, String)> = [(&names.username, username), (&names.phone, phone)]
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k.clone(), v)))
                .collect();
            let token = mint(&s, &sub, &email, ttl, sid, login_age, &extra).map_err(fail)?;
            println!("{token}");
            Ok(())
        }
        Cmd::Policy(PolicyCmd::Lint {
            config,
            deny_warnings,
        }) => {
            let s = load(&config)?;
            let p = load_policy(&s)?;
            let warnings = policy::lint::lint(&p);
            for w in &warnings {
                println!("{w}");
            }
            eprintln!("{} warning(s) in {} rules", warnings.len(), p.rules.len());
            if deny_warnings && !warnings.is_empty() {
                return Err(ExitCode::from(1));
            }
            Ok(())
        }
        Cmd::Policy(PolicyCmd::Test { config, cases }) => {
            let s = load(&config)?;
            let p = load_policy(&s)?;
            let text = std::fs::read_to_string(&cases)
                .map_err(|e| fail(format!("cannot read {}: {e}", cases.display())))?;
            let outcomes = policy::testcases::run(&p, &cases.display().to_string(), &text)
                .map_err(|d| {
                    print_diags(&d);
                    ExitCode::from(1)
                })?;
            let failed = outcomes.iter().filter(|o| o.failure.is_some()).count();
            for o in &outcomes {
                match &o.failure {
                    None => println!("ok    {}", o.name),
                    Some(f) => println!("FAIL  {}\n      {}: {f}", o.name, o.at),
                }
            }
            println!(
                "policy test: {} passed, {failed} failed",
                outcomes.len() - failed
            );
            if failed > 0 {
                return Err(ExitCode::from(1));
            }
            Ok(())
        }
        Cmd::Admin { config, json, what } => {
            use stepgate::runtime::admin::{self, Action};
            let settings = load(&config)?;
            let action = match what {
                AdminCmd::User { action, sub } => match action.as_str() {
                    "show" => Action::Show(sub),
                    "unlock" => Action::Unlock(sub),
                    "reset-pin" => Action::RemovePin(sub),
                    _ => Action::Revoke(sub),
                },
                AdminCmd::Unlock { ip } => Action::UnlockIp(ip),
                AdminCmd::Locks => Action::Locks,
            };
            let out = admin::run(&config, settings, action, json).map_err(fail)?;
            println!("{out}");
            Ok(())
        }
        Cmd::Store(StoreCmd::Migrate { from, to }) => {
            let (a, b) = (load(&from)?, load(&to)?);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(fail)?;
            let n = rt
                .block_on(async {
                    let src = stepgate::store::open(&a.store)?;
                    let dst = stepgate::store::open(&b.store)?;
                    stepgate::store::migrate(&*src, &*dst)
                        .await
                        .map_err(|e| e.to_string())
                })
                .map_err(fail)?;
            println!(
                "copied {} record(s) and {} recovery index entr{} from {} to {}",
                n.records,
                n.index_entries,
                if n.index_entries == 1 { "y" } else { "ies" },
                from.display(),
                to.display()
            );
            Ok(())
        }
        Cmd::Demo {
            listen,
            app,
            dir,
            first_factor,
        } => demo(&listen, &app, &dir, first_factor == "session-check"),
        Cmd::Upstream { listen, cookie } => {
            server::init_logging("warn", false);
            server::run_upstream(&listen, &cookie).map_err(fail)
        }
    }
}

fn load_policy(s: &config::Settings) -> Result<policy::Policy, ExitCode> {
    policy::Policy::load(&s.policy_path).map_err(|d| {
        print_diags(&d);
        ExitCode::from(1)
    })
}

fn explain(p: &policy::Policy, method: &str, url: &str, json: bool) -> Result<(), ExitCode> {
    let (host, path) = match url.parse::<http::Uri>() {
        Ok(u) if u.host().is_some() => (u.host().unwrap_or("").to_string(), u.path().to_string()),
        Ok(u) if url.starts_with('/') => (String::new(), u.path().to_string()),
        _ => {
            return Err(fail(format!(
                "`{url}` is not a URL; give https://host/path or /path"
            )))
        }
    };
    let method = method.to_ascii_uppercase();
    let (match_path, _) = policy::normalize_path(&path).map_err(|e| {
        fail(format!(
            "`{path}` would be refused with 400 before any rule: {e:?}"
        ))
    })?;
    let m = p.lookup(&host, &method, &match_path);
    let mut out =
        serde_json::json!({"rule": m.rule.map(|r| r.name.clone()), "require": m.require.name()});
    if let policy::Require::StepUp(s) = m.require {
        out["methods"] = s
            .methods
            .iter()
            .map(|f| f.name())
            .collect::<Vec<_>>()
            .into();
        out["max_age_secs"] = s.max_age.as_secs().into();
        if s.is_bound() {
            out["bind"] = s.bind.clone().into();
        }
    }
    // A POST with a body, or `_method` in its query, is judged as the
    // strictest of every method it could be run as (`method_override`).
    let overridden = (method == "POST")
        .then(|| p.judge(&host, &method, &match_path, true))
        .filter(|o| !std::ptr::eq(o.require, m.require));
    if let Some(o) = &overridden {
        out["with_method_override"] = serde_json::json!({"rule": o.rule.map(|r| r.name.clone()), "require": o.require.name()});
    }
    if json {
        println!("{out}");
        return Ok(());
    }
    match m.rule {
        Some(r) => {
            println!("{method} {url}");
            println!(
                "  matches rule `{}` ({}:{}:{})",
                r.name, r.file, r.line, r.col
            );
            println!("    host:    {}", r.host.as_deref().unwrap_or("any"));
            println!("    path:    {} (request path {match_path})", r.path);
            println!(
                "    methods: {}",
                if r.methods.is_empty() {
                    "any".to_string()
                } else {
                    r.methods.join(", ")
                }
            );
            println!("  it is the first rule in file order that matches.");
        }
        None => {
            println!("{method} {url}");
            println!(
                "  no rule matches; the policy default applies{}",
                p.default_origin
                    .as_ref()
                    .map(|o| format!(" (set at {o})"))
                    .unwrap_or_else(|| " (not set: authenticated)".into())
            );
        }
    }
    match m.require {
        policy::Require::StepUp(s) => {
            let methods: Vec<&str> = s.methods.iter().map(|f| f.name()).collect();
            if s.single_use() {
                println!(
                    "  requires: step_up with {} for every request (single use)",
                    methods.join(" or ")
                );
            } else {
                println!(
                    "  requires: step_up with {}, at most {}s old",
                    methods.join(" or "),
                    s.max_age.as_secs()
                );
            }
            if s.is_bound() {
                println!(
                    "  bound to: {} (form field, JSON top-level key or query parameter); a request with other values needs a new step-up",
                    s.bind.join(", ")
                );
            }
        }
        r => println!("  requires: {}", r.name()),
    }
    if let Some(o) = &overridden {
        println!(
            "  but with a body, or `_method` in its query, an app may run it as another method (method_override): such a POST is judged as rule `{}` and requires {}",
            o.rule_name(),
            o.require.name()
        );
    }
    Ok(())
}

fn mint(
    s: &config::Settings,
    sub: &str,
    emails: &[String],
    ttl: i64,
    sid: Option<String>,
    login_age: i64,
    extra: &[(String, String)],
) -> Result<String, String> {
    let config::KeySource::Secret(secret) = &s.first_factor.key else {
        return Err("`token` mints HS* tokens only; this config verifies first-factor tokens with a public key, so tokens must come from your identity provider".into());
    };
    let now = clock::now();
    let mut claims = serde_json::json!({
        "sub": sub,
        "iat": now,
        "auth_time": now - login_age,
        "exp": now + ttl,
        "sid": sid.unwrap_or_else(tokens::random_id),
    });
    if let Some(first) = emails.first() {
        claims["email"] = first.clone().into();
        claims["emails"] = emails.to_vec().into();
    }
    for (k, v) in extra {
        claims[k.as_str()] = v.clone().into();
    }
    if let Some(i) = &s.first_factor.issuer {
        claims["iss"] = i.clone().into();
    }
    if let Some(a) = &s.first_factor.audience {
        claims["aud"] = a.clone().into();
    }
    let alg = s.first_factor.algorithms[0];
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.expose()),
    )
    .map_err(|e| e.to_string())
}

fn demo(listen: &str, app: &str, dir: &Path, session_check: bool) -> Result<(), ExitCode> {
    std::fs::create_dir_all(dir)
        .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
    let secret_file = |name: &str| -> Result<(), ExitCode> {
        let p = dir.join(name);
        if !p.exists() {
            std::fs::write(
                &p,
                format!("{}{}", tokens::random_id(), tokens::random_id()),
            )
            .map_err(|e| fail(format!("{}: {e}", p.display())))?;
        }
        Ok(())
    };
    secret_file("signing.key")?;
    secret_file("first-factor.key")?;
    let policy = dir.join("policy.yaml");
    if !policy.exists() {
        std::fs::write(&policy, demo::DEMO_POLICY).map_err(|e| fail(e.to_string()))?;
    }
    let own_session = if session_check {
        format!("  session_check:\n    url: \"http://{app}/demo/whoami\"\n    cookies: [\"demo_session\"]\n    user: \"/user/id\"\n    email: \"/user/email\"\n    auth_time: \"/user/login_at\"\n    cache: 10s\n  login_url: \"http://{listen}/demo/signin\"\n")
    } else {
        String::new()
    };
    let cfg = format!(
        "# Written by `stepgate demo`; edit freely, it is kept between runs.\nlisten: \"{listen}\"\nupstream: \"http://{app}\"\npolicy: policy.yaml\nfirst_factor:\n{own_session}  cookie: access_token\n  jwt:\n    algorithms: [HS256]\n    secret_file: first-factor.key\nsigning:\n  secret_file: signing.key\nstore:\n  kind: embedded\n  path: stepgate.redb\nmail:\n  from: \"stepgate-demo@example.com\"\n  dir: mailbox\nemail_otp:\n  mode: without_mfa\nsecurity_questions:\n  - {{ id: school, question: \"What was the name of your first school?\" }}\n  - {{ id: street, question: \"In which street did you grow up?\" }}\nlog:\n  format: text\n"
    );
    let cfg_path = dir.join("gateway.yaml");
    std::fs::write(&cfg_path, cfg).map_err(|e| fail(e.to_string()))?;
    let s = load(&cfg_path)?;
    let token = mint(
        &s,
        "demo-user",
        &["demo@example.com".to_string()],
        8 * 3600,
        None,
        0,
        &[("preferred_username".to_string(), "demo".to_string())],
    )
    .map_err(fail)?;
    println!("stepgate demo");
    println!(
        "  gateway:  http://{listen}   (config: {})",
        cfg_path.display()
    );
    println!("  demo app: http://{app}      (shows the headers stepgate sends)");
    println!(
        "  mailbox:  {}   (emailed codes land here as .eml files)",
        dir.join("mailbox").display()
    );
    println!();
    if session_check {
        println!("The demo app keeps its own login form and session cookie (first_factor.session_check).");
        println!("Sign in on the app's own page, then visit /admin to meet the PIN step-up:");
        println!("  http://{listen}/demo/signin");
        if !std::fs::read_to_string(&policy)
            .unwrap_or_default()
            .contains("/demo/signin")
        {
            println!("  (your kept {} has no rule for /demo/signin: add `require: none` for it, or remove the file to get the demo's)", policy.display());
        }
    } else {
        println!(
            "Open this link to sign in as demo-user, then visit /admin to meet the PIN step-up:"
        );
        println!("  http://{listen}/demo/login?token={token}");
        println!("(Or `stepgate demo --first-factor session-check`: the app's own login form and session.)");
    }
    println!();
    server::init_logging(&s.log_level, s.log_json);
    server::run(
        &cfg_path,
        s,
        server::Extra {
            demo_upstream: Some(app.to_string()),
            upgrade: false,
        },
    )
    .map_err(fail)
}
