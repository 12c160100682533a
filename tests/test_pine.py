"""Pine Script export (aiopt_lib.pine.export): generation from every built-in template, validation with
positions, auto-correction of the broken-script corpus in tests/data/pine."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from aiopt_lib.pine.export import (
    Call,
    If,
    Input,
    PineExportError,
    PineScript,
    StrategyCall,
    Var,
    check_pine,
    export_errors,
    fix_pine,
    render,
    spec_to_ir,
    spec_to_pine,
)
from aiopt_lib.strategy.search import builtin_template, builtin_template_names
from aiopt_lib.strategy.spec import Costs, Distance, StrategySpec

CORPUS = Path(__file__).parent / "data" / "pine"
TEMPLATES = [n for n in builtin_template_names() if n != "ai_gate"]  # ai_gate needs a model
AI_RULES = {"ai_buy": "ta.rsi(close, 14) / 100.0", "ai_sell": "1.0 - ta.rsi(close, 14) / 100.0"}


def _spec(name: str) -> StrategySpec:
    return builtin_template(name).spec


def _checked(text: str, version: int) -> list:
    start = time.perf_counter()
    issues = check_pine(text, version)
    print(f"check_pine v{version}: {1000 * (time.perf_counter() - start):.1f} ms")
    return issues


@pytest.mark.parametrize("version", [5, 6])
@pytest.mark.parametrize("name", TEMPLATES)
def test_templates_export_and_validate(name: str, version: int) -> None:
    spec = _spec(name)
    text = spec_to_pine(spec, version=version)
    assert text.startswith(f"//@version={version}\n")
    assert _checked(text, version) == []
    # every param is an input with its value as the default
    for key, value in spec.params.items():
        found = re.search(rf"^{key} = input\.(int|float)\(([^,]+), \"{key}\"", text, re.M)
        assert found, key
        assert float(found.group(2)) == float(value)
    # every ta.* call sits on an unindented top-level declaration, not in an if or a branch
    for line in text.splitlines():
        if "ta." in line and not line.startswith("//"):
            assert not line.startswith((" ", "if ")), line
            assert re.match(r"^(float |bool |\[)", line), line
    # each indicator declared once
    calls = re.findall(r"ta\.\w+\([^)]*\)", text)
    assert len(calls) == len(set(calls))
    # the header holds the spec JSON, every line commented
    header = text.split("\nstrategy(")[0]
    assert all(line.startswith("//") for line in header.splitlines())
    assert f'"name": "{spec.name}"' in header
    assert spec.long_entry.replace('"', '\\"') in header
    # no deprecated arguments; every strategy setting explicit
    assert "when=" not in text and "transp=" not in text
    for setting in (
        "initial_capital=100000.0",
        "default_qty_type=strategy.fixed",
        "default_qty_value=100000.0",
        "commission_type=strategy.commission.cash_per_contract",
        "commission_value=0.000025",
        "slippage=2",  # 1 tick + half the 0.2-pip spread
        "pyramiding=0",
        "process_orders_on_close=false",
        "calc_on_every_tick=false",
        "margin_long=0",
        "margin_short=0",
    ):
        assert setting in text, setting
    assert "strategy.risk.allow_entry_in(strategy.direction.all)" in text
    assert 'strategy.entry("L", strategy.long)' in text
    assert 'strategy.entry("S", strategy.short)' in text


def test_ema_cross_structure() -> None:
    text = spec_to_pine(_spec("ema_cross"), version=6)
    # one declaration per indicator; crossovers hoisted into bools; dmi destructured
    assert text.count("ta.ema(close, fast)") == 1
    assert "float ema_fast = ta.ema(close, fast)" in text
    assert "bool ema_fast_over_ema_slow = ta.crossover(ema_fast, ema_slow)" in text
    assert "bool ema_fast_under_ema_slow = ta.crossunder(ema_fast, ema_slow)" in text
    assert "[plus_di_14_14, minus_di_14_14, adx_14_14] = ta.dmi(14, 14)" in text
    assert 'fast = input.int(12, "fast", minval=1)' in text
    assert 'stop_atr = input.float(2.0, "stop_atr")' in text
    # ATR stop and take: distances at the signal bar, ticks with the engine's rounding
    assert "float stop_distance = atr_14 * stop_atr" in text
    assert "long_stop_ticks := math.ceil(stop_distance / syminfo.mintick - 0.5)" in text
    assert "long_take_ticks := math.floor(take_distance / syminfo.mintick + 0.5)" in text
    assert "short_stop_ticks := math.floor(stop_distance / syminfo.mintick + 0.5)" in text
    assert (
        'strategy.exit("XL", from_entry="L", loss=long_stop_ticks, profit=long_take_ticks, '
        'comment_loss="stop", comment_profit="take")' in text
    )
    # the 0.2-pip spread: half of it (1 tick) added to the template's 1 tick of slippage
    assert "slippage=2" in text
    # both entries on one bar enter neither, as in the engine
    assert "bool go_long = long_entry and not short_entry" in text


def test_bollinger_and_pattern_exports() -> None:
    text = spec_to_pine(_spec("bollinger_reversion"), version=5)
    assert "= ta.bb(close, bb_length, bb_mult)" in text
    assert "close * stop_pct / 100.0" in text  # percent stop of the signal bar's close
    assert (
        "bool long_entry = low <= bb_lower_bb_length_bb_mult and rsi_rsi_length < rsi_low" in text
    )
    text = spec_to_pine(_spec("pattern_rsi"), version=6)
    # patterns with their averages hoisted: no ta.* inside the pattern expressions
    pattern_lines = [line for line in text.splitlines() if line.startswith("bool pat_")]
    assert len(pattern_lines) == 4
    assert all("ta." not in line for line in pattern_lines)
    assert "float ma_sma_1 = ta.sma(close, 10)" in text
    # trailing stop from the fill: trail active at once plus a fixed stop at the same distance
    assert "trail_points=na(long_trail_ticks) ? na : 0, trail_offset=long_trail_ticks" in text
    assert "loss=long_trail_ticks" in text


@pytest.mark.parametrize("version", [5, 6])
def test_ai_gate_needs_ai_rules(version: int) -> None:
    spec = _spec("ai_gate")
    with pytest.raises(PineExportError, match=r"AI gate not exportable.*ai_buy"):
        spec_to_pine(spec, version=version)
    text = spec_to_pine(spec, version=version, ai_rules=AI_RULES)
    assert _checked(text, version) == []
    assert "float ai_buy = (ta.rsi(close, 14) / 100.0)" in text
    assert "bool long_entry = close > ema_trend and ai_buy >= gate" in text
    # a replacement that is not valid Pine is caught by the validation
    with pytest.raises(PineExportError, match="does not validate"):
        spec_to_pine(spec, version=version, ai_rules={**AI_RULES, "ai_buy": "ta.nope(close)"})


def test_direction_commission_metrics_and_shift() -> None:
    spec = StrategySpec(
        name="long only",
        params={"n": 10, "k": 3},
        long_entry="close > sma(n)[2] and (close - open)[1] > 0 and not (stoch_k(14, k, 3) > 80)",
        short_entry="close < sma(n) and macd_hist() < 0 and bb_pctb(n, 2.0) < 0.1",
        long_exit="n / k > 4",
        direction="long",
        stop_loss=Distance(unit="pips", value=15),
        costs={"spread": "data", "commission_percent": 0.002},
    )
    metrics = {"out_of_sample": {"sharpe": 1.25, "trades": 42}}
    text = spec_to_pine(spec, version=6, metrics=metrics, data_range="2017-01-02 .. 2017-12-29")
    assert _checked(text, 6) == []
    assert "strategy.risk.allow_entry_in(strategy.direction.long)" in text
    # a forbidden short entry closes the long (the engine and allow_entry_in alike)
    assert "bool exit_long = long_exit or short_entry" in text
    assert "bool go_short = false" in text
    assert 'strategy.entry("S"' not in text
    assert "commission_type=strategy.commission.percent, commission_value=0.002" in text
    assert "slippage=0" in text
    assert "// data range: 2017-01-02 .. 2017-12-29" in text
    assert "//   out_of_sample.sharpe: 1.25" in text
    assert "sma_n[2]" in text  # a shifted indicator reads its own history
    assert "float shifted = close - open" in text and "shifted[1] > 0.0" in text
    assert "(n * 1.0) / k > 4.0" in text  # int / int made a float division
    assert "float stop_distance = 15.0 * 0.0001" in text
    assert "ta.sma(ta.stoch(close, high, low, 14), k)" in text
    assert "(close - bb_lower_n_2p0) / (bb_upper_n_2p0 - bb_lower_n_2p0)" in text


def test_both_commissions_warn_and_say_so() -> None:
    costs = Costs(spread=0.2, commission_percent=0.001, commission_per_unit=2e-5)
    spec = _spec("ema_cross").model_copy(update={"costs": costs}).revalidated()
    with pytest.warns(UserWarning, match="commission_percent=0.001 is NOT exported"):
        text = spec_to_pine(spec)
    assert "// NOT EXACT: commission_percent=0.001 is NOT exported" in text
    assert "commission_type=strategy.commission.cash_per_contract, commission_value=0.00002" in text


def test_ir_renders_with_one_renderer() -> None:
    script = PineScript(
        version=6,
        header_comments=("hand-built",),
        strategy_call=StrategyCall('say "hi"', (("overlay", "true"),)),
        inputs=(Input("length", "int", 20, "length", minval=1),),
        declarations=(Var("basis", "float", "ta.sma(close, length)"),),
        statements=(If("close > basis", (Call('strategy.entry("L", strategy.long)'),)),),
        plots=(Call("plot(basis)"),),
    )
    text = render(script)
    assert 'strategy("say \\"hi\\"", overlay=true)' in text
    assert 'length = input.int(20, "length", minval=1)' in text
    assert '\nif close > basis\n    strategy.entry("L", strategy.long)\n' in text
    assert check_pine(text, 6) == []
    ir = spec_to_ir(_spec("ema_cross"), version=5)
    assert render(ir) == spec_to_pine(_spec("ema_cross"), version=5)
    assert [i.name for i in ir.inputs] == list(_spec("ema_cross").params)


# ---------------------------------------------------------------------------------------------
# Validation


def _issue_at(text: str, line: int, token: str) -> int:
    """The 1-based column of ``token`` on ``line`` of ``text``."""
    return text.splitlines()[line - 1].index(token) + 1


def test_check_positions_point_at_the_token() -> None:
    text = (
        "//@version=6\n"
        'strategy("x")\n'
        "float a = ta.smaa(close, 3)\n"
        "bool b = close > open and ta.rsi(close, 14) > 50\n"
        'strategy.entry("L", strategy.long, when=b)\n'
        "plot(a + missing, transp=10)\n"
        "float c = 1/2\n"
    )
    issues = {i.code: i for i in check_pine(text, 6)}
    expected = {
        "unknown-function": (3, "ta.smaa"),
        "conditional-ta": (4, "ta.rsi"),
        "when-argument": (5, "when"),
        "undeclared": (6, "missing"),
        "transp-argument": (6, "transp"),
        "int-division": (7, "/"),
    }
    for code, (line, token) in expected.items():
        issue = issues[code]
        assert (issue.line, issue.column) == (line, _issue_at(text, line, token)), code
    assert issues["int-division"].severity == "warning"  # v6 divides const ints as floats
    assert check_pine(text.replace("@version=6", "@version=5"), 5)[-1].severity == "error"


def test_check_version_and_laziness_by_version() -> None:
    v5 = '//@version=5\nindicator("x")\nbool b = close > open and ta.rsi(close, 14) > 50\nplot(close)\n'
    (issue,) = check_pine(v5, 5)
    assert issue.code == "conditional-ta" and issue.severity == "warning"  # eager in v5
    issue, lazy = check_pine(v5, 6)  # checked as the v6 script it was asked to be
    assert issue.code == "version" and (issue.line, issue.column) == (1, 1)
    assert lazy.code == "conditional-ta" and lazy.severity == "warning"  # valid, TradingView warns
    assert "history differs" in lazy.message
    assert check_pine('indicator("x")\nplot(close)\n')[0].code == "version"
    # `x * 1/2` is (x * 1) / 2, not an int division
    assert check_pine('//@version=5\nindicator("x")\nplot(close * 1/2)\n', 5) == []


# ---------------------------------------------------------------------------------------------
# The corpus of broken scripts: each fixed (and then clean) or reported at its token

FIXED = {
    "when_entry_v6.pine": ["when=up", "when=down and close < open"],
    "transp_plot_v5.pine": ["transp=40", "transp=0"],
    "lazy_and_v6.pine": ["ta.rsi(close, 14)"],
    "ta_in_if_body_v5.pine": ["ta.atr(14)"],
    "int_division_v5.pine": ["1/2", "3/4"],
    "several_v5.pine": ["ta.cci(close, 20)", "when=oversold", "1/2", "transp=50"],
}
REPORTED = {
    "syntax_missing_paren_v5.pine": [(4, 1, "syntax", "Expected RPAREN")],
    "syntax_bad_operator_v6.pine": [(3, 22, "syntax", "MULT")],
    "undeclared_v5.pine": [(4, 13, "undeclared", "slow_line")],
    "unknown_function_v6.pine": [
        (3, 16, "unknown-function", "ta.smaa"),
        (4, 17, "unknown-function", "math.rond"),
    ],
    "ta_in_function_v6.pine": [(6, 19, "conditional-ta", "ta.sma")],
    # still refused with the respelling of valid v6 (array parameters, `method` as a name)
    "method_without_body_v6.pine": [(6, 1, "syntax", "METHOD")],
    "method_as_name_broken_v6.pine": [(4, 11, "syntax", "NEWLINE")],
    "syntax_after_array_param_v6.pine": [(7, 1, "syntax", "Expected RPAREN")],
    "array_param_undeclared_v6.pine": [
        (4, 5, "undeclared", "'vals'"),
        (7, 20, "undeclared", "'missing_offset'"),
    ],
    "ta_arity_v6.pine": [
        (3, 14, "arity", "ta.sma() takes 2 arguments, got 1"),
        (4, 18, "arity", "ta.rsi() takes 2 arguments, got 3"),
    ],
}


def test_corpus_is_complete() -> None:
    files = sorted(p.name for p in CORPUS.glob("*.pine"))
    assert files == sorted([*FIXED, *REPORTED])
    assert len(files) >= 8


@pytest.mark.parametrize("name", sorted(FIXED))
def test_corpus_fixed(name: str) -> None:
    text = (CORPUS / name).read_text()
    version = int(re.search(r"_v(\d)\.pine$", name).group(1))
    before = check_pine(text, version)
    assert any(i.severity == "error" or i.code == "conditional-ta" for i in before)
    fixed, fixes = fix_pine(text, version)
    assert len(fixes) == len(FIXED[name])
    for fix, what in zip(fixes, FIXED[name], strict=True):
        assert what in fix
    assert _checked(fixed, version) == []
    assert "when=" not in fixed and "transp=" not in fixed


def test_corpus_fix_contents() -> None:
    fixed, _ = fix_pine((CORPUS / "when_entry_v6.pine").read_text(), 6)
    assert '\nif up\n    strategy.entry("L", strategy.long)\n' in fixed
    assert '\nif down and close < open\n    strategy.close("L")\n' in fixed
    fixed, _ = fix_pine((CORPUS / "ta_in_if_body_v5.pine").read_text(), 5)
    lines = fixed.splitlines()
    hoisted = lines.index("ta_atr_hoisted = ta.atr(14)")
    assert lines[hoisted + 1].startswith("if ta.crossover(")
    assert "    stop_distance := ta_atr_hoisted * 2.0" in lines
    fixed, _ = fix_pine((CORPUS / "int_division_v5.pine").read_text(), 5)
    assert "float half = 1.0/2" in fixed and "close * (3.0/4)" in fixed


@pytest.mark.parametrize("name", sorted(REPORTED))
def test_corpus_reported(name: str) -> None:
    text = (CORPUS / name).read_text()
    version = int(re.search(r"_v(\d)\.pine$", name).group(1))
    fixed, fixes = fix_pine(text, version)
    assert fixes == [] and fixed == text
    issues = export_errors(check_pine(text, version))  # errors, and what an export refuses
    found = [(i.line, i.column, i.code) for i in issues]
    assert found == [(line, column, code) for line, column, code, _ in REPORTED[name]]
    for issue, (_, _, _, words) in zip(issues, REPORTED[name], strict=True):
        assert words in issue.message


# ---------------------------------------------------------------------------------------------
# Valid v6 scripts: no false alarms

VALID_CORPUS = CORPUS / "valid"
# the conditional-ta warnings each valid script must give, as (line, the call's text)
SWITCH_MA = ["ta.sma(source", "ta.sma(source", "ta.ema(", "ta.rma(", "ta.wma(", "ta.vwma("]
VALID: dict[str, list[tuple[int, str]]] = {
    "array_params_v6.pine": [],
    "builtin_template_style_v6.pine": [
        *((15 + k, call) for k, call in enumerate(SWITCH_MA)),
        (45, "ta.stdev("),
    ],
    "drawings_and_requests_v6.pine": [],
    "leading_comma_continuation_v6.pine": [],
    "library_exports_v6.pine": [],
    "method_and_input_names_v6.pine": [(10, "ta.sma("), (10, "ta.rma("), (10, "ta.ema(")],
    "strategy_arrays_v6.pine": [],
    "switch_ternary_ta_v6.pine": [
        (10, "ta.sma("),
        (11, "ta.ema("),
        (12, "ta.wma("),
        (13, "ta.hma("),
        (14, "ta.vwma("),
        (16, "ta.ema("),
        (20, "ta.sma("),
        (21, "ta.ema("),
        (22, "ta.rma("),
    ],
    "syntax_mix_v6.pine": [],
}


def test_valid_corpus_is_complete() -> None:
    assert sorted(p.name for p in VALID_CORPUS.glob("*.pine")) == sorted(VALID)


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_scripts_give_no_error(name: str) -> None:
    text = (VALID_CORPUS / name).read_text()
    issues = _checked(text, 6)
    assert [str(i) for i in issues if i.severity == "error"] == []
    expected = [(line, _issue_at(text, line, call)) for line, call in VALID[name]]
    assert [(i.line, i.column) for i in issues] == expected
    for issue in issues:
        assert (issue.code, issue.severity) == ("conditional-ta", "warning")
        assert "should be called on each bar for consistency" in issue.message


@pytest.mark.parametrize(
    "body",
    [
        # typed array, matrix, map and user-type array parameters
        "f(float[] xs) => xs.size()\nplot(f(array.new<float>()))",
        "f(series float[] xs, int[] ks) => xs.size() + ks.size()\nplot(f(array.from(1.0), array.from(1)))",
        "f(matrix<float> m, map<string, float> w) => m.rows() + w.size()\nplot(close)",
        "type P\n    float v\nf(P[] ps) => ps.size()\nplot(f(array.new<P>()))",
        "type P\n    float v\ntype B\n    float[] bids\n    P[] levels\nplot(close)",
        # `method`, `input` and `type` as ordinary names
        'method = input.string("EMA")\nplot(method == "EMA" ? close : open)',
        'string method = input.string("EMA")\nmethod := "SMA"\nplot(close)',
        'f(float x, string method = "A") => method == "A" ? x : 0\nplot(f(close, method = "B"))',
        "input = close\nplot(input[1])",
        "float input = close\nplot(input)",
        "f(input) => input * 2\nplot(f(close))",
        'type = input.string("SMA")\nplot(type == "SMA" ? 1 : 0)',
        "method double(float x) => x * 2\nplot(close.double())",
        # libraries named like a namespace or used by their name
        "import TradingView/ta/7\nplot(ta.ao())",
        "import jdehorty/KernelFunctions/2\nplot(KernelFunctions.rationalQuadratic(close, 8, 1, 25))",
    ],
)
def test_valid_snippets_give_no_issue(body: str) -> None:
    assert check_pine(f'//@version=6\nindicator("x")\n{body}\n', 6) == []


@pytest.mark.parametrize(
    "body",
    [
        "export const float K = 2.0\nexport f(float x) => x * K",
        "export enum Mode\n    fast\n    slow\nexport f(Mode m) => m == Mode.fast ? 1 : 2",
        "export method total(float[] self) => self.sum()",
    ],
)
def test_valid_library_snippets_give_no_issue(body: str) -> None:
    assert check_pine(f'//@version=6\nlibrary("x")\n{body}\n', 6) == []


def test_conditional_ta_severity_by_construct() -> None:
    text = (
        "//@version=6\n"
        'indicator("x")\n'
        'kind = input.string("EMA")\n'
        "float a = switch kind\n"
        '    "EMA" => ta.ema(close, 9)\n'
        "    => ta.emaa(close, 9)\n"
        "float b = close > open ? ta.sma(close, 9) : na\n"
        "float c = na\n"
        "if close > open\n"
        "    c := close > 1 ? ta.rma(close, 9) : 0\n"
        "float d = if close > open\n"
        "    ta.wma(close, 9)\n"
        "else\n"
        "    0.0\n"
        "bool e = close > open and (close > 1 ? ta.rsi(close, 9) > 50 : false)\n"
        "plot(a + b + c + d + (e ? 1 : 0))\n"
    )
    found = [(i.line, i.code, i.severity) for i in check_pine(text, 6)]
    assert found == [
        (5, "conditional-ta", "warning"),  # a switch arm: TradingView warns
        (6, "conditional-ta", "warning"),
        (6, "unknown-function", "error"),  # a branch does not excuse a misspelt name
        (7, "conditional-ta", "warning"),  # a ?: branch
        (10, "conditional-ta", "warning"),  # a ?: inside an `if` block is the block's call
        (12, "conditional-ta", "warning"),  # an `if` used as an expression is an `if` block
        (15, "conditional-ta", "warning"),  # a ?: inside a lazy v6 `and` operand
    ]
    # TradingView compiles each of them with a warning; in an `if` or a lazy operand the message
    # says the result differs, and our exports refuse them all
    messages = {i.line: i.message for i in check_pine(text, 6) if i.code == "conditional-ta"}
    assert all("history differs" in messages[line] for line in (10, 12, 15))
    assert all("for consistency" in messages[line] for line in (5, 6, 7))
    assert len(export_errors(check_pine(text, 6))) == len(found)
    text_v5 = text.replace("@version=6", "@version=5")
    severities = {i.line: i.severity for i in check_pine(text_v5, 5) if i.code == "conditional-ta"}
    assert severities[15] == "warning"  # v5 evaluates `and` eagerly: only the ?: branch is left
    assert severities[10] == "warning"


def test_cli_exports_a_ranking_and_checks_files(tmp_path, capsys):
    from aiopt_lib.data.sources import load_sample
    from aiopt_lib.runs.cli import main
    from aiopt_lib.strategy.search import SearchConfig, builtin_template, run_search, save_ranking

    bars = load_sample()
    config = SearchConfig(n_trials=6, n_folds=1, min_trades=1, top_k=2)
    result = run_search(
        bars, builtin_template("ema_cross"), config, run_dir=tmp_path, progress=False
    )
    ranking = save_ranking(result, tmp_path / "ranking.json")
    out = tmp_path / "pine"
    assert (
        main(["pine", "export", "--ranking", str(ranking), "--out", str(out), "--version", "6"])
        == 0
    )
    files = sorted(out.glob("*.pine"))
    assert [f.name for f in files] == [f"{r.rank}_ema_cross_{r.rank}.pine" for r in result.top]
    text = files[0].read_text()
    assert text.startswith("//@version=6")
    assert f"input.int({result.top[0].spec.params['fast']}" in text
    assert "sharpe" in text  # the out-of-sample metrics in the header
    capsys.readouterr()
    assert main(["pine", "check", str(files[0])]) == 0
    assert capsys.readouterr().out.strip().endswith(": ok")
    broken = tmp_path / "broken.pine"
    broken.write_text('//@version=6\nstrategy("x")\nplot(ta.smaa(close, 2), transp=50)\n')
    assert main(["pine", "check", str(broken)]) == 1
    printed = capsys.readouterr().out
    assert f"{broken}:3:6: error" in printed and f"{broken}:3:25: error" in printed
    # --fix writes the corrected script: transp= goes, the unknown function stays an error
    assert main(["pine", "check", str(broken), "--fix"]) == 1
    assert "transp" not in broken.read_text()
