%% dist_peer — the BEAM side of the distribution tests. Run as
%%   erl -name N -setcookie C -noshell -pa DIR -run dist_peer main MODE [ARG]
%% peer: registers `beam_srv` (a gen_server: {double, N} -> 2N; a dspex tool
%%       call {tool_call, <<"weather">>, ArgsJSON} -> {ok, Text}) and `echo`
%%       (answers {From, Term} with {echo, Term}; {From, links} and
%%       {From, watch} send exit signals to / watch them from From, see
%%       echo/0), prints READY, waits.
%% call NODE: gen_server:call({qa_agent, NODE}, ...) with a good and a bad
%%       request; prints RESULT lines, then halts.
-module(dist_peer).
-behaviour(gen_server).
-export([main/1, init/1, handle_call/3, handle_cast/2]).

main(["peer"]) ->
    {ok, _} = gen_server:start({local, beam_srv}, ?MODULE, [], []),
    register(echo, spawn(fun echo/0)),
    io:format("READY~n"),
    receive stop -> halt(0) end;
main(["call", Node]) ->
    N = list_to_atom(Node),
    R1 = gen_server:call({qa_agent, N},
                         {predict, #{<<"question">> => <<"What is the capital of France?">>}},
                         20000),
    io:format("RESULT1 ~p~n", [R1]),
    R2 = gen_server:call({qa_agent, N}, {predict, not_a_map}, 20000),
    io:format("RESULT2 ~p~n", [R2]),
    R3 = (catch gen_server:call({no_such_name, N}, ping, 5000)),
    io:format("RESULT3 ~p~n", [element(1, R3)]),
    halt(0).

echo() ->
    receive
        {From, weird} when is_pid(From) ->
            %% Terms a dspex node cannot hold, then one it can.
            From ! {echo, [a | b]},
            From ! {echo, 1 bsl 70},
            From ! {echo, fun() -> ok end},
            From ! {echo, <<1:3>>},
            From ! {echo, [1, 1 bsl 40, -(1 bsl 62), "str"]};
        {From, links} when is_pid(From) ->
            %% Exit signals into a dspex process: a link taken back before
            %% its process dies (nothing must arrive), exit/2 from an
            %% unlinked process, and a linked process that dies.
            spawn(fun() -> link(From), unlink(From),
                           From ! {echo, unlinked}, exit(quiet) end),
            spawn(fun() -> exit(From, {told, 1}) end),
            spawn(fun() -> link(From), From ! {echo, linked},
                           exit({died, 2}) end);
        {From, watch} when is_pid(From) ->
            %% A trapping process that reports every exit signal it gets.
            spawn(fun() -> process_flag(trap_exit, true),
                           From ! {echo, {watcher, self()}},
                           watch(From) end);
        {From, Term} when is_pid(From) -> From ! {echo, Term};
        _ -> ok
    end,
    echo().

watch(To) ->
    receive {'EXIT', P, R} -> To ! {echo, {exit, P, R}} end,
    watch(To).

init([]) -> {ok, #{}}.
handle_call({double, N}, _From, S) -> {reply, {ok, 2 * N}, S};
handle_call({crash}, _From, _S) -> exit(crashed);
handle_call({tool_call, <<"weather">>, Args}, _From, S) when is_binary(Args) ->
    {reply, {ok, <<"BEAM says sunny for ", Args/binary>>}, S};
handle_call({tool_call, Tool, _}, _From, S) ->
    {reply, {error, <<"no tool ", Tool/binary>>}, S};
handle_call(Other, _From, S) -> {reply, {error, {unknown, Other}}, S}.
handle_cast(_, S) -> {noreply, S}.
