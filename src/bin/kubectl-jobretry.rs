//! `kubectl jobretry`, a kubectl plugin (kubectl runs `kubectl-jobretry` found on PATH):
//! preview a selector's matches with a dry run, start a run and follow its progress, print a
//! run's rows. Flags, manifests and text are the library's (`jobretry_operator::plugin`);
//! this file only talks to the API server and draws progress.
#![forbid(unsafe_code)]

use std::{
    io::IsTerminal,
    time::{Duration, Instant},
};

use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use jobretry_operator::{
    crd::{
        JobRetry, Phase,
        policy::{JobRetryPolicy, POLICY_LABEL},
    },
    plugin::{
        self, Cli, Command, PluginError, PreviewArgs, RunArgs, api_error,
        render::{self, Progress},
    },
};
use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};

/// How often a followed run is read again.
const POLL: Duration = Duration::from_millis(250);

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = dispatch(cli).await {
        eprintln!("error: {e}");
        std::process::exit(e.exit_code());
    }
}

async fn dispatch(cli: Cli) -> Result<(), PluginError> {
    let now = Timestamp::now();
    if let Command::Run(args) = &cli.command
        && let Some(format) = &args.output
    {
        let jr = plugin::jobretry(&args.select, Some(args), cli.namespace.as_deref(), now)?;
        print!("{}", plugin::manifest(&jr, format)?);
        return Ok(());
    }
    let (client, namespace) = connect(&cli).await?;
    let api: Api<JobRetry> = Api::namespaced(client.clone(), &namespace);
    let policies: Api<JobRetryPolicy> = Api::namespaced(client, &namespace);
    match &cli.command {
        Command::Preview(args) => preview(&api, &namespace, args, now).await,
        Command::Run(args) => start(&api, &namespace, args, now).await,
        Command::Status(args) if args.policy => {
            policy_status(&api, &policies, &namespace, &args.name).await
        }
        Command::Status(args) => {
            let jr = (api.get(&args.name).await)
                .map_err(|e| api_error(e, &namespace, Some(&args.name)))?;
            print!("{}", render::status(&jr));
            Ok(())
        }
        Command::Trigger(args) => {
            let policy = get_policy(&policies, &namespace, &args.name).await?;
            let name = create(&api, &namespace, &plugin::triggered(&policy, now)).await?;
            println!(
                "jobretry.jobretry.io/{name} created (a run of policy {})",
                args.name
            );
            Ok(())
        }
        Command::Resume(args) => {
            get_policy(&policies, &namespace, &args.name).await?;
            let patch = Patch::Merge(plugin::resume_patch(now));
            (policies
                .patch(&args.name, &PatchParams::default(), &patch)
                .await)
                .map_err(|e| api_error(e, &namespace, Some(&args.name)))?;
            println!("jobretrypolicy.jobretry.io/{} resumed at {now}", args.name);
            Ok(())
        }
    }
}

async fn get_policy(
    policies: &Api<JobRetryPolicy>,
    namespace: &str,
    name: &str,
) -> Result<JobRetryPolicy, PluginError> {
    (policies.get(name).await).map_err(|e| match api_error(e, namespace, Some(name)) {
        PluginError::NotFound { .. } => PluginError::Refused(format!(
            "JobRetryPolicy {name} not found in namespace {namespace}"
        )),
        other => other,
    })
}

/// Prints a policy's state and its runs (the JobRetries it controls).
async fn policy_status(
    api: &Api<JobRetry>,
    policies: &Api<JobRetryPolicy>,
    namespace: &str,
    name: &str,
) -> Result<(), PluginError> {
    let policy = get_policy(policies, namespace, name).await?;
    let labels = ListParams::default().labels(&format!("{POLICY_LABEL}={name}"));
    let runs = (api.list(&labels).await).map_err(|e| api_error(e, namespace, None))?;
    let uid = policy.metadata.uid.clone();
    let owned: Vec<JobRetry> = (runs.items.into_iter())
        .filter(|r| {
            r.owner_references()
                .iter()
                .any(|o| Some(&o.uid) == uid.as_ref())
        })
        .collect();
    print!("{}", render::policy(&policy, &owned));
    Ok(())
}

/// A client for the kubeconfig's (or `--kubeconfig`'s) context and the namespace to use.
async fn connect(cli: &Cli) -> Result<(Client, String), PluginError> {
    let bad = |e: &dyn std::fmt::Display| PluginError::Kubeconfig(e.to_string());
    let options = KubeConfigOptions {
        context: cli.context.clone(),
        ..Default::default()
    };
    let config = match (&cli.kubeconfig, &cli.context) {
        (Some(path), _) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| bad(&e))?;
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| bad(&e))?
        }
        (None, Some(_)) => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| bad(&e))?,
        (None, None) => kube::Config::infer().await.map_err(|e| bad(&e))?,
    };
    let namespace = (cli.namespace.clone()).unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(|e| api_error(e, &namespace, None))?;
    Ok((client, namespace))
}

/// `preview`: a dry run, waited for, printed, and deleted unless `--keep`.
async fn preview(
    api: &Api<JobRetry>,
    namespace: &str,
    args: &PreviewArgs,
    now: Timestamp,
) -> Result<(), PluginError> {
    let jr = plugin::jobretry(&args.select, None, Some(namespace), now)?;
    let name = create(api, namespace, &jr).await?;
    eprintln!("jobretry/{name} created (dry run); waiting for its preview");
    let timeout = plugin::parse_duration(&args.timeout)?;
    let done = follow(api, namespace, &name, timeout, &mut |_| {}).await;
    if let Ok(jr) = &done {
        print!("{}", render::preview(jr));
    }
    if !args.keep && !matches!(done, Err(PluginError::Timeout { .. })) {
        (api.delete(&name, &DeleteParams::default()).await)
            .map_err(|e| api_error(e, namespace, Some(&name)))?;
    }
    done.map(|_| ())
}

/// `run`: creates the run; with `--wait`, shows its progress until it ends.
async fn start(
    api: &Api<JobRetry>,
    namespace: &str,
    args: &RunArgs,
    now: Timestamp,
) -> Result<(), PluginError> {
    let jr = plugin::jobretry(&args.select, Some(args), Some(namespace), now)?;
    let name = create(api, namespace, &jr).await?;
    println!("jobretry.jobretry.io/{name} created");
    if !args.wait {
        println!(
            "follow it with: {}",
            plugin::status_command(namespace, &name)
        );
        return Ok(());
    }
    let timeout = plugin::parse_duration(&args.timeout)?;
    let mut display = Display::new();
    let done = follow(api, namespace, &name, timeout, &mut |jr| {
        display.show(&render::progress(jr))
    })
    .await;
    display.finish();
    let jr = done?;
    print!("{}", render::summary(&jr));
    Ok(())
}

async fn create(
    api: &Api<JobRetry>,
    namespace: &str,
    jr: &JobRetry,
) -> Result<String, PluginError> {
    let name = jr.metadata.name.as_deref();
    let made = (api.create(&PostParams::default(), jr).await)
        .map_err(|e| api_error(e, namespace, name))?;
    Ok(made.metadata.name.unwrap_or_default())
}

/// Reads the JobRetry `name` until it ends, calling `show` with each read; an error when it
/// ends Failed, is stalled (waits for a fix outside it), or `timeout` passes.
async fn follow(
    api: &Api<JobRetry>,
    namespace: &str,
    name: &str,
    timeout: Duration,
    show: &mut dyn FnMut(&JobRetry),
) -> Result<JobRetry, PluginError> {
    let deadline = Instant::now() + timeout;
    loop {
        let jr = (api.get(name).await).map_err(|e| api_error(e, namespace, Some(name)))?;
        show(&jr);
        let st = jr.status.as_ref();
        if render::is_done(&jr) {
            return match Phase::of(st) {
                Some(Phase::Failed) => Err(PluginError::RunFailed(render::summary(&jr))),
                _ => Ok(jr),
            };
        }
        if let Some(why) = st.and_then(render::held) {
            return Err(PluginError::RunFailed(format!(
                "jobretry/{name} is stalled (it waits for a fix outside it): {why}"
            )));
        }
        if Instant::now() >= deadline {
            return Err(PluginError::Timeout {
                after: format!("{}s", timeout.as_secs()),
                name: name.to_string(),
                namespace: namespace.to_string(),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Progress on a terminal: a live bar; otherwise one plain line per change, no escapes.
enum Display {
    Bar(ProgressBar),
    Lines(Option<String>),
}

impl Display {
    fn new() -> Self {
        if !std::io::stdout().is_terminal() {
            return Display::Lines(None);
        }
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stdout());
        let style = ProgressStyle::with_template("{spinner} {elapsed:>4} [{bar:30}] {msg}")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(100));
        Display::Bar(bar)
    }

    fn show(&mut self, p: &Progress) {
        match self {
            Display::Bar(bar) => {
                // 0 of 0 would draw a full bar before anything is known.
                bar.set_length(p.length.max(1));
                bar.set_position(p.position);
                bar.set_message(p.message.clone());
            }
            Display::Lines(last) => {
                if last.as_ref() != Some(&p.message) {
                    println!("{}", p.message);
                    *last = Some(p.message.clone());
                }
            }
        }
    }

    fn finish(&self) {
        if let Display::Bar(bar) = self {
            bar.finish();
        }
    }
}
