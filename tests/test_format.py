"""pyd.format: the Go-template subset, docker's functions, tables and tabwriter alignment."""

from __future__ import annotations

import pytest

from pyd.errors import InvalidParameter
from pyd.format import (
    JSONView,
    Template,
    TemplateError,
    derive_header,
    format_list,
    format_one,
    go_str,
    tabulate,
    tabwrite,
)

CONTAINER = {
    "ID": "77c780ad05e7",
    "Image": "busybox:latest",
    "Names": ["web", "alias"],
    "Labels": {"b": "2", "a": "1"},
    "State": {"Running": True, "ExitCode": 0, "Pid": None},
    "Ports": [],
    "Size": 1.5,
}


def render(text: str, data=CONTAINER) -> str:
    return Template(text).render(data)


# -- fields and printing -------------------------------------------------------------------------


def test_fields_nested_fields_dot_and_root():
    assert render("{{.ID}} {{.State.ExitCode}} {{.State.Running}}") == "77c780ad05e7 0 true"
    assert render("{{.}}", "plain") == "plain"
    assert render("{{range .Names}}{{$.ID}}:{{.}} {{end}}") == "77c780ad05e7:web 77c780ad05e7:alias "


def test_values_print_like_go():
    assert render("{{.Nope}}|{{.State.Pid}}|{{.Nope.Deeper}}") == "<no value>|<nil>|<no value>"
    assert render("{{.Names}} {{.Labels}} {{.Ports}}") == "[web alias] map[a:1 b:2] []"
    assert [go_str(f) for f in (1.5, 100.0, 123456.0, 1e6, 25276514304.0, 0.0001, 1e-5)] == [
        "1.5", "100", "123456", "1e+06", "2.5276514304e+10", "0.0001", "1e-05"]


def test_json_function():
    assert render("{{json .Labels}}") == '{"b":"2","a":"1"}'
    assert render("{{json .Nope}} {{json .State.Pid}}") == "null null"
    assert render("{{json .}}", {"s": "<a&b> ü"}) == '{"s":"<a&b> ü"}'  # no HTML escaping
    assert format_one("json", {"a": [1, True]}) == '{"a":[1,true]}'


def test_objects_attributes_and_methods():
    class Row:
        ID = "abc"

        def __init__(self):
            self.labels = {"com.x": "y"}

        def Label(self, key):  # noqa: N802 - a Go-style template method
            return self.labels.get(key, "")

        def Upper(self):  # noqa: N802
            return "UP"

        def __json__(self):
            return {"ID": self.ID}

    assert render('{{.ID}} {{.Label "com.x"}} {{.Upper}} {{json .}}', Row()) == 'abc y UP {"ID":"abc"}'
    with pytest.raises(TemplateError, match="can't evaluate field Nope"):
        render("{{.Nope}}", Row())


def test_jsonview_maps_go_names_to_json_keys():
    event = {"id": "abc", "Type": "container", "Actor": {"ID": "abc"}}
    view = JSONView(event, {"ID": "id"})
    assert render("{{.ID}} {{.Type}} {{.Actor.ID}}", view) == "abc container abc"
    assert render("{{json .}}", view) == '{"id":"abc","Type":"container","Actor":{"ID":"abc"}}'


# -- functions -----------------------------------------------------------------------------------


def test_docker_functions():
    assert render('{{join .Names ","}}') == "web,alias"
    assert render("{{upper .Image}} {{lower \"ABC\"}} {{title \"hello big-world\"}}") == (
        "BUSYBOX:LATEST abc Hello Big-World")
    assert render('{{split "a:b:c" ":"}} {{len (split "a:b" ":")}}') == "[a b c] 2"
    assert render('[{{pad "x" 1 2}}] {{truncate .ID 5}} {{truncate "ab" 5}}') == "[ x  ] 77c78 ab"
    assert render('{{println "a" 1}}') == "a 1\n"
    assert render("{{println}}") == "\n"


def test_go_builtins():
    assert render('{{printf "%s=%d %5s|%-4s|%q %v" "a" 3 "r" "l" "q" .Names}}') == (
        'a=3     r|l   |"q" [web alias]')
    assert render('{{printf "%.2f %03d %x"  1.2345 7 255}}') == "1.23 007 ff"
    assert render("{{len .Names}} {{index .Names 1}} {{index .Labels \"a\"}}") == "2 alias 1"
    assert render("{{slice .ID 0 3}}") == "77c"
    assert render('{{if eq .Image "x" "busybox:latest"}}y{{end}}{{if ne 1 2}}n{{end}}') == "yn"
    assert render("{{if and .ID .Names}}a{{end}}{{if or .Ports .Nope}}o{{else}}-{{end}}") == "a-"
    assert render("{{if not .Ports}}empty{{end}} {{if lt 1 2}}lt{{end}}") == "empty lt"
    assert render('{{print "a" "b" 1 2}}') == "ab1 2"


def test_pipelines_and_parentheses():
    assert render("{{.Image | upper}}") == "BUSYBOX:LATEST"
    assert render('{{.Image | printf "%s!"}}') == "busybox:latest!"
    assert render("{{(index .Names 0) | upper | lower}}") == "web"
    assert render("{{(index . 0).Name}}", [{"Name": "n"}]) == "n"


# -- control structures --------------------------------------------------------------------------


def test_if_else_if_else():
    tmpl = "{{if .A}}a{{else if .B}}b{{else}}c{{end}}"
    assert [render(tmpl, d) for d in ({"A": 1}, {"B": "x"}, {"A": 0, "B": ""})] == ["a", "b", "c"]


def test_range_with_variables_over_lists_and_sorted_maps():
    assert render("{{range $k, $v := .Labels}}{{$k}}={{$v}};{{end}}") == "a=1;b=2;"
    assert render("{{range $i, $n := .Names}}{{$i}}:{{$n}} {{end}}") == "0:web 1:alias "
    assert render("{{range .Ports}}x{{else}}none{{end}}") == "none"
    assert render("{{range .Nope}}x{{end}}") == ""


def test_with_and_variables():
    assert render("{{with .State}}{{.ExitCode}}{{end}}{{with .Ports}}x{{else}}-{{end}}") == "0-"
    assert render("{{$x := .ID}}{{range .Names}}{{$x}}{{end}}") == "77c780ad05e777c780ad05e7"
    assert render("{{$x := 1}}{{$x = 2}}{{$x}}") == "2"


def test_whitespace_trimming_and_comments():
    assert render("a  {{- .ID -}}  b {{/* gone */}}c") == "a77c780ad05e7b c"
    assert render("{{- /* only a comment */ -}}") == ""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{{.ID", "unclosed action"),
        ("{{nosuch .ID}}", 'function "nosuch" not defined'),
        ("{{if .ID}}x", "unexpected EOF"),
        ("{{end}}", "unexpected {{end}}"),
        ("{{template \"x\"}}", "not supported"),
        ("{{.ID | }}", "missing command"),
        ("{{}}", "missing value"),
    ],
)
def test_parse_errors_are_invalid_parameter(text, message):
    with pytest.raises(InvalidParameter, match="template parsing error") as info:
        Template(text)
    assert message in str(info.value)


def test_execution_errors_name_the_problem():
    with pytest.raises(TemplateError, match="can't evaluate field X in type string"):
        render("{{.Image.X}}")
    with pytest.raises(TemplateError, match="range can't iterate"):
        render("{{range .State.Running}}{{end}}")
    with pytest.raises(TemplateError, match="executing"):
        render("{{slice .ID 1 2 3}}")


# -- tables --------------------------------------------------------------------------------------

PS_HEADERS = {"ID": "CONTAINER ID", "RunningFor": "CREATED"}
PS_FORMAT = ("table {{.ID}}\t{{.Image}}\t{{.Command}}\t{{.RunningFor}}\t{{.Status}}\t"
             "{{.Ports}}\t{{.Names}}")


def test_empty_table_is_docker_ps_header():
    assert format_list(PS_FORMAT, [], PS_HEADERS) == (
        "CONTAINER ID   IMAGE     COMMAND   CREATED   STATUS    PORTS     NAMES\n")


def test_table_columns_are_aligned_like_docker():
    rows = [
        {"ID": "77c780ad05e7", "Image": "busybox", "Command": '"sleep 300"',
         "RunningFor": "2 minutes ago", "Status": "Up 2 minutes", "Ports": "", "Names": "web"},
        {"ID": "d682300130cb", "Image": "busybox:local", "Command": '"true"',
         "RunningFor": "3 hours ago", "Status": "Exited (0) 3 hours ago", "Ports": "",
         "Names": "a_much_longer_name"},
    ]
    assert format_list(PS_FORMAT, rows, PS_HEADERS) == (
        "CONTAINER ID   IMAGE           COMMAND       CREATED         STATUS                   PORTS     NAMES\n"
        '77c780ad05e7   busybox         "sleep 300"   2 minutes ago   Up 2 minutes                       web\n'
        'd682300130cb   busybox:local   "true"        3 hours ago     Exited (0) 3 hours ago             a_much_longer_name\n'
    )


def test_table_headers_derive_from_field_names_and_pass_through_functions():
    out = format_list(
        'table {{.Name}}\\t{{.CreatedAt}}\\t{{join .Names ","}}\\t{{.Config.Image | upper}}\\t{{json .Labels}}',
        [{"Name": "n", "CreatedAt": "t", "Names": ["a", "b"], "Config": {"Image": "i"},
          "Labels": {}}],
    )
    assert out.splitlines() == [
        "NAME      CREATED AT   NAMES     IMAGE     LABELS",
        "n         t            a,b       I         {}",
    ]


def test_table_header_of_a_method_field():
    class Row:
        def Label(self, key):  # noqa: N802
            return {"com.x": "y"}.get(key, "")

    assert format_list('table {{.Label "com.x"}}', [Row()]) == "LABEL\ny\n"


def test_non_table_format_prints_one_line_per_item_with_tab_escapes():
    rows = [{"ID": "a", "Image": "x"}, {"ID": "b", "Image": "y"}]
    assert format_list("{{.ID}}\\t{{.Image}}", rows) == "a\tx\nb\ty\n"
    assert format_list("json", rows) == '{"ID":"a","Image":"x"}\n{"ID":"b","Image":"y"}\n'


def test_derive_header():
    assert [derive_header(n) for n in ("ID", "CreatedAt", "ContainerID", "IPv6", "Driver",
                                       "LocalVolumes", "dist", "IPAddress")] == [
        "ID", "CREATED AT", "CONTAINER ID", "IPV6", "DRIVER", "LOCAL VOLUMES", "DIST", "IP ADDRESS"]


# -- tabwriter -----------------------------------------------------------------------------------


def test_tabwrite_min_width_padding_and_unaligned_last_cell():
    assert tabwrite("a\tbb\tlast\nccc\td\tx\n") == "a         bb        last\nccc       d         x\n"
    assert tabwrite("a-very-long-cell\tb\n", minwidth=10, padding=3) == "a-very-long-cell   b\n"


def test_tabwrite_blocks_end_at_a_line_without_the_column():
    # A line without tabs ends the column block: widths restart after it (Go's tabwriter).
    text = "looooooong\tx\nheading\nab\ty\n"
    assert tabwrite(text, minwidth=0, padding=1) == "looooooong x\nheading\nab y\n"


def test_tabwrite_version_style_block():
    text = "Client:\n Version:\t0.1.0\n API version:\t1.41\n"
    assert tabwrite(text, minwidth=20, padding=1) == (
        "Client:\n Version:           0.1.0\n API version:       1.41\n")


def test_tabulate():
    assert tabulate([["KIND", "NAME"], ["log", "json-file"], ["ipam", None]]) == (
        "KIND      NAME\nlog       json-file\nipam      <nil>\n")
