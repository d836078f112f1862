//! Budgets at run time: a run stops at a turn boundary before it would pass its loop's
//! `tokens_per_run` or what is left of a daily budget (outcome `budget`), and a loop whose
//! day's spend reaches its daily budget, or the workspace's, is held until the next UTC
//! midnight with a handoff to the main session saying so. Costs are estimates from
//! [`loops_core::pricing`], never a bill.

use crate::engine::run_context::RunContext;
use chrono::{DateTime, Utc};
use loops_agent::agent_loop::{BeforeTurn, TurnHooks, TurnModel};
use loops_agent::model::{Message, Usage};
use loops_core::budget::{self, Budget};
use loops_core::domain::LoopDef;
use loops_core::runs::{RunInProgress, RunLog};
use loops_core::spend::{self, Spend};
use loops_core::workspace::{Settings, Workspace};

/// The estimated cost of `usage` on `model` of `provider` (a local server costs nothing);
/// `None` when the model's price is unknown.
/// `models`: the one the provider said answered, then the one asked for (an alias such
/// as `claude-sonnet-4-5` answers as a dated name; a local server may name its file).
pub fn cost_of(
    s: &Settings,
    provider: Option<&str>,
    models: &[Option<&str>],
    usage: &Usage,
) -> Option<f64> {
    let local = provider
        .and_then(|p| s.providers.get(p))
        .is_some_and(|p| loops_core::pricing::is_local_url(&p.base_url));
    let priced = models
        .iter()
        .flatten()
        .find_map(|m| s.pricing.price(m).map(|p| (p, *m)));
    match priced {
        Some((_, m)) => s.pricing.estimate(usage, m, false).map(|c| c.0),
        None if local => Some(0.0),
        None => None,
    }
}

/// The estimated cost of a run's `total` tokens, each model's turns (`by_model`) at its own
/// price when more than one model answered (a fallback mid-run). Tokens no turn accounts
/// for (a call cut short) are priced as the last model's. `None` when a model's price is
/// unknown.
pub fn cost_of_turns(
    s: &Settings,
    provider: Option<&str>,
    models: &[Option<&str>],
    total: &Usage,
    by_model: &[loops_agent::agent_loop::ModelUsage],
) -> Option<f64> {
    let (Some(last), true) = (by_model.last(), by_model.len() > 1) else {
        return cost_of(s, provider, models, total);
    };
    let price = |m: &loops_agent::agent_loop::ModelUsage, u: &Usage| {
        let names = [m.answered.as_deref(), Some(m.asked.as_str())];
        cost_of(s, Some(&m.provider), &names, u)
    };
    let mut counted = Usage::default();
    let mut cost = 0.0;
    for m in by_model {
        cost += price(m, &m.usage)?;
        counted.add(&m.usage);
    }
    let rest = Usage {
        input: total.input.saturating_sub(counted.input),
        output: total.output.saturating_sub(counted.output),
        cache_read: total.cache_read.saturating_sub(counted.cache_read),
        cache_write: total.cache_write.saturating_sub(counted.cache_write),
    };
    Some(cost + price(last, &rest)?)
}

/// What the loop and the workspace spent today.
pub fn spent(ctx: &RunContext, loop_name: &str, now: DateTime<Utc>) -> (Spend, Spend) {
    spent_in(&ctx.ws, &ctx.runlog, loop_name, now)
}

/// What `name` (a loop, or the main session) and the workspace (every loop, the main
/// session and the agent jobs) spent today.
fn spent_in(ws: &Workspace, runlog: &RunLog, name: &str, now: DateTime<Utc>) -> (Spend, Spend) {
    let layout = ws.layout();
    (
        spend::spent_today(runlog, name, now),
        spend::workspace_spent_today(runlog, &layout.runs_dir(), &layout.jobs_spend_dir(), now),
    )
}

/// Why the loop may not run more today (its daily budget, or the workspace's, is
/// reached), in words; `None` while both have room.
pub fn over_today(ctx: &RunContext, def: &LoopDef, now: DateTime<Utc>) -> Option<String> {
    let ws_budget = &ctx.ws.settings.budget;
    if def.budget.is_empty() && ws_budget.is_empty() {
        return None;
    }
    let (mine, all) = spent(ctx, &def.name, now);
    if let Some(why) = spend::over_daily(&def.budget, &mine) {
        return Some(format!(
            "`{}`: {why} (domains/{}/config.yaml)",
            def.name, def.name
        ));
    }
    spend::over_daily(ws_budget, &all).map(|why| workspace_words(&why))
}

/// Why a loop held for its daily budget may not start now, in words, with the ways out.
pub fn held_until(
    def: &LoopDef,
    state: Option<&loops_core::state::LoopState>,
    now: DateTime<Utc>,
) -> Option<String> {
    let until = state?.budget_paused_until.filter(|u| *u > now)?;
    Some(format!(
        "`{}` is held for its daily budget until {} (raise `budget:` in domains/{}/config.yaml or loops.yaml, or `loops resume {}`)",
        def.name,
        until.to_rfc3339(),
        def.name,
        def.name
    ))
}

/// Holds the loop until the next UTC midnight and tells the main session, once a day: a
/// loop already held until then is left alone. The handoff is committed, as every
/// handoff the runner writes is.
pub async fn hold_for_the_day(
    ctx: &RunContext,
    def: &LoopDef,
    run_id: &str,
    why: &str,
    now: DateTime<Utc>,
) {
    let until = budget::next_day(now);
    let newly = ctx.store.update(&def.name, |st| match st.as_mut() {
        Some(s) if s.budget_paused_until.is_some_and(|u| u >= until) => false,
        Some(s) => {
            s.budget_paused_until = Some(until);
            true
        }
        // A loop's first run (a `loops trigger` before any scheduled one) has no state yet.
        None => {
            let mut s =
                loops_core::state::LoopState::new(now, &crate::engine::scheduler::fingerprint(def));
            s.budget_paused_until = Some(until);
            *st = Some(s);
            true
        }
    });
    match newly {
        Ok(true) => {
            let (ctx, n) = (ctx.clone(), handoff(def, run_id, why, until));
            let made = tokio::task::spawn_blocking(move || {
                loops_core::handoff::create_committed(&ctx.ws, ctx.committer.as_ref(), &n)
            })
            .await;
            if !matches!(made, Ok(Some(_))) {
                tracing::warn!(loop_name = %def.name, "could not make the budget handoff");
            }
        }
        Ok(false) => {}
        Err(e) => {
            tracing::error!(loop_name = %def.name, "cannot hold the loop for its budget: {e}")
        }
    }
}

fn handoff(
    def: &LoopDef,
    run_id: &str,
    why: &str,
    until: DateTime<Utc>,
) -> loops_core::handoff::NewHandoff {
    loops_core::handoff::NewHandoff {
        from: def.name.clone(),
        to: "main".into(),
        title: format!("{} is paused until tomorrow: daily budget reached", def.name),
        run: Some(run_id.to_string()),
        flagged: Some("budget".into()),
        body: format!(
            "{why}. The loop runs again by itself at {} (the next UTC midnight). Spend is an estimate from token counts and `pricing:`, not a bill. To let it run more each day, raise `budget:` in domains/{}/config.yaml or loops.yaml.",
            until.to_rfc3339(),
            def.name
        ),
        items: vec!["Decide whether the budget is right".into()],
        ..Default::default()
    }
}

/// After a run's record is in: a loop that has now reached a daily budget is held.
pub async fn after_run(ctx: &RunContext, def: &LoopDef, run_id: &str) {
    let now = Utc::now();
    if let Some(why) = over_today(ctx, def, now) {
        hold_for_the_day(ctx, def, run_id, &why, now).await;
    }
}

/// Who spends a run's tokens: a loop (its own `budget:` in its config.yaml) or the main
/// session (none of its own); the workspace's budget is over both.
struct Spender<'a> {
    name: &'a str,
    own: &'a Budget,
    file: String,
}

/// What the main session's wakes are recorded under (`.loops/runs/main.jsonl`).
const MAIN_SESSION: &str = "main";

/// Why the main session may not wake on a model again today (the workspace's daily
/// budget, which it shares with every loop, is reached), in words; `None` while there is
/// room, or no budget.
pub fn main_over_today(ctx: &RunContext, now: DateTime<Utc>) -> Option<String> {
    workspace_over_today(&ctx.ws, &ctx.runlog, now)
}

/// Why nothing without a budget of its own (the main session, an agent job) may start
/// on a model again today: the workspace's daily budget is reached. `None` while there
/// is room, or no budget.
pub fn workspace_over_today(ws: &Workspace, runlog: &RunLog, now: DateTime<Utc>) -> Option<String> {
    let ws_budget = &ws.settings.budget;
    if ws_budget.is_empty() {
        return None;
    }
    let (_, all) = spent_in(ws, runlog, MAIN_SESSION, now);
    spend::over_daily(ws_budget, &all).map(|why| workspace_words(&why))
}

/// The workspace's daily budget reached, in words: what it covers and where it is set.
fn workspace_words(why: &str) -> String {
    format!("all loops together, with the main session and agent jobs: {why} (loops.yaml)")
}

/// A run's budget, checked between turns: stops the conversation before a turn that
/// would pass `tokens_per_run` or what today's budgets have left. The next turn is
/// taken to cost what the last one did (the conversation only grows), so a run stops
/// before it goes over, not after.
pub struct RunBudget {
    per_run: Option<u64>,
    /// What today's tightest budget has left, and the file that sets it.
    tokens_left: Option<(u64, String)>,
    cost_left: Option<(f64, String)>,
    /// What prices a turn: the pricing table, and which providers are local.
    settings: Settings,
    used: Usage,
    last: Usage,
    /// The estimated cost of the turns so far, and of the last, each at the price of the
    /// model that made it; `None` once a turn's model has no price.
    cost_used: Option<f64>,
    cost_last: Option<f64>,
    /// Why it stopped the run, once it has.
    pub stopped: Option<Stop>,
}

/// Why a run was stopped between turns.
pub struct Stop {
    pub why: String,
    /// A daily budget (the loop's or the workspace's), not `tokens_per_run`, stopped it.
    pub daily: bool,
}

impl RunBudget {
    /// The budget of a run of `def` starting at `now` (each turn priced as the model that
    /// made it); `None` when no budget applies to it.
    pub fn for_run(ctx: &RunContext, def: &LoopDef, now: DateTime<Utc>) -> Option<RunBudget> {
        let spender = Spender {
            name: &def.name,
            own: &def.budget,
            file: format!("domains/{}/config.yaml", def.name),
        };
        RunBudget::for_spender(&ctx.ws, &ctx.runlog, spender, now)
    }

    /// The budget of a wake of the main session: the workspace's (loops.yaml
    /// `budget:`), which all loops and the main session share; `None` when it sets none.
    pub fn for_main_wake(ctx: &RunContext, now: DateTime<Utc>) -> Option<RunBudget> {
        RunBudget::for_agent_job(&ctx.ws, &ctx.runlog, now)
    }

    /// The budget of an attempt of an agent job: the workspace's, as for a wake of the main
    /// session (neither has a budget of its own); `None` when loops.yaml sets none.
    pub fn for_agent_job(ws: &Workspace, runlog: &RunLog, now: DateTime<Utc>) -> Option<RunBudget> {
        let spender = Spender {
            name: MAIN_SESSION,
            own: &Budget::default(),
            file: "loops.yaml".into(),
        };
        RunBudget::for_spender(ws, runlog, spender, now)
    }

    fn for_spender(
        ws: &Workspace,
        runlog: &RunLog,
        spender: Spender<'_>,
        now: DateTime<Utc>,
    ) -> Option<RunBudget> {
        let ws_budget = ws.settings.budget;
        if spender.own.is_empty() && ws_budget.is_empty() {
            return None;
        }
        let (mine, all) = spent_in(ws, runlog, spender.name, now);
        let left = |b: &Budget, s: &Spend| {
            (
                b.tokens_per_day.map(|t| t.saturating_sub(s.tokens)),
                b.cost_per_day.map(|c| (c - s.cost).max(0.0)),
            )
        };
        let (t1, c1) = left(spender.own, &mine);
        let (t2, c2) = left(&ws_budget, &all);
        // The tighter of the two, with the file that sets it, for the message.
        let here = spender.file;
        let there = "loops.yaml".to_string();
        let min_u = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) if b < a => Some((b, there.clone())),
            (Some(a), _) => Some((a, here.clone())),
            (None, b) => b.map(|b| (b, there.clone())),
        };
        let min_f = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b < a => Some((b, there.clone())),
            (Some(a), _) => Some((a, here.clone())),
            (None, b) => b.map(|b| (b, there.clone())),
        };
        let s = &ws.settings;
        Some(RunBudget {
            // loops.yaml's is every run's cap; a loop's own can only be tighter.
            per_run: [spender.own.tokens_per_run, ws_budget.tokens_per_run]
                .into_iter()
                .flatten()
                .min(),
            tokens_left: min_u(t1, t2),
            cost_left: min_f(c1, c2),
            settings: s.clone(),
            used: Usage::default(),
            last: Usage::default(),
            cost_used: Some(0.0),
            cost_last: Some(0.0),
            stopped: None,
        })
    }

    /// Why the next turn may not be made, if it may not.
    fn verdict(&self) -> Option<Stop> {
        let used = spend::total(&self.used);
        let next = used + spend::total(&self.last);
        if let Some(l) = self.per_run.filter(|l| next > *l) {
            return Some(Stop {
                why: format!(
                    "stopped after {used} tokens: another turn would pass budget.tokens_per_run {l}"
                ),
                daily: false,
            });
        }
        if let Some((l, file)) = self.tokens_left.as_ref().filter(|(l, _)| next > *l) {
            return Some(Stop {
                why: format!(
                    "stopped after {used} tokens: another turn would pass budget.tokens_per_day ({l} tokens were left today; {file})"
                ),
                daily: true,
            });
        }
        if let (Some((l, file)), Some(a), Some(b)) =
            (self.cost_left.as_ref(), self.cost_used, self.cost_last)
        {
            if a + b > *l {
                return Some(Stop {
                    why: format!(
                        "stopped after an estimated ${a:.4}: another turn would pass budget.cost_per_day (${l:.4} was left today; {file})"
                    ),
                    daily: true,
                });
            }
        }
        None
    }
}

/// The hooks of a loop's prompt run or a wake of the main session: its budget, and its
/// spend so far written into its job after each turn, so that a run whose process dies is
/// recorded `interrupted` with its tokens, and a restart does not spend the day again.
pub struct RunHooks<'a> {
    pub budget: Option<RunBudget>,
    ctx: &'a RunContext,
    marker: RunInProgress,
}

impl<'a> RunHooks<'a> {
    pub fn new(ctx: &'a RunContext, budget: Option<RunBudget>, marker: &RunInProgress) -> Self {
        RunHooks {
            budget,
            ctx,
            marker: marker.clone(),
        }
    }
}

impl TurnHooks for RunHooks<'_> {
    fn before_turn(&mut self, turn: u32) -> BeforeTurn {
        match self.budget.as_mut() {
            Some(b) => b.before_turn(turn),
            None => BeforeTurn::default(),
        }
    }

    fn after_turn(
        &mut self,
        turn: u32,
        m: &[Message],
        usage: &Usage,
        last: Option<&str>,
        by: &TurnModel,
    ) {
        if let Some(b) = self.budget.as_mut() {
            b.after_turn(turn, m, usage, last, by);
        }
        let names = [by.answered.as_deref(), Some(by.asked.as_str())];
        let cost = cost_of(&self.ctx.ws.settings, Some(&by.provider), &names, usage);
        self.marker.spent.get_or_insert_default().add(usage, cost);
        if let Err(e) = self.ctx.running.put(&self.marker) {
            tracing::warn!(run = %self.marker.run_id, "cannot note what the run has spent so far: {e}");
        }
    }
}

impl TurnHooks for RunBudget {
    fn before_turn(&mut self, turn: u32) -> BeforeTurn {
        if turn > 1 && self.stopped.is_none() {
            self.stopped = self.verdict();
        }
        BeforeTurn {
            inject: Vec::new(),
            pause: self.stopped.is_some(),
        }
    }

    fn after_turn(
        &mut self,
        _turn: u32,
        _m: &[Message],
        usage: &Usage,
        _last: Option<&str>,
        by: &TurnModel,
    ) {
        self.used.add(usage);
        self.last = *usage;
        let names = [by.answered.as_deref(), Some(by.asked.as_str())];
        let cost = cost_of(&self.settings, Some(&by.provider), &names, usage);
        self.cost_last = cost;
        self.cost_used = self.cost_used.zip(cost).map(|(a, b)| a + b);
    }
}
