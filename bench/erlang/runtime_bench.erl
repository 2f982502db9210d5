%% runtime_bench.erl — the BEAM baseline for bench/runtime_bench.c.
%%
%% It owns the Erlang side of the kernel comparison: the same workloads as
%% `runtime-bench <bench> <n>` (noop, spawn, pingpong, call, ring, skynet,
%% fanout, restart), doing the same work message for message, and printing
%% the same one-line result with sys=beam:
%%     RESULT sys=beam bench=<bench> n=<n> time_s=.. rate=.. unit=.. [k=v ...]
%% The driver is an ordinary process spawned by main/1; timing uses the
%% monotonic clock inside it. Compile it (erlc) and run it with
%%     erl -noshell +S 2 +P 4194304 -pa <dir> -run runtime_bench main <bench> <n>
%% bench/compare.sh does exactly that.
-module(runtime_bench).

-export([main/0, main/1]).
%% Callbacks of the restart benchmark's supervisor and its gen_server child.
-export([init/1, start_child/1, handle_call/3, handle_cast/2, handle_info/2]).

-define(RING_SIZE, 1000).
-define(FANOUT_WORKERS, 100).
-define(SKYNET_FANOUT, 10).
%% A driver receive that waits this long means a lost message or a hang.
-define(RECV_TIMEOUT_MS, 60000).
%% Restarts per supervisor in the restart benchmark; see bench(restart, _).
-define(RESTART_BATCH, 100).
-define(WORKER_NAME, bench_worker).

main([Bench, NStr]) ->
    case parse(Bench, NStr) of
        {ok, B, N} ->
            %% Supervisor reports would otherwise be formatted and printed
            %% for every killed child, timing the logger instead of restarts.
            ok = logger:set_primary_config(level, none),
            Main = self(),
            {Pid, Ref} = spawn_monitor(fun() -> Main ! {status, bench(B, N)} end),
            receive
                {status, Code} ->
                    halt(Code);
                {'DOWN', Ref, process, Pid, Reason} ->
                    err("~s: driver exited: ~p", [Bench, Reason]),
                    halt(1)
            end;
        error ->
            usage()
    end;
main(_) ->
    usage().

main() ->
    usage().

parse(Bench, NStr) ->
    Benches = [noop, spawn, pingpong, call, ring, skynet, fanout, restart],
    case [B || B <- Benches, atom_to_list(B) =:= Bench] of
        [B] ->
            try list_to_integer(NStr) of
                N when N >= 1 -> {ok, B, N};
                _ -> error
            catch
                error:badarg -> error
            end;
        _ ->
            error
    end.

usage() ->
    io:format(standard_error,
              "usage: runtime_bench main <bench> <n>~n"
              "  bench: noop spawn pingpong call ring skynet fanout restart~n"
              "  n: a positive integer (noop ignores it)~n", []),
    halt(2).

err(Fmt, Args) ->
    io:format(standard_error, "runtime_bench: " ++ Fmt ++ "~n", Args).

now_ns() -> erlang:monotonic_time(nanosecond).

secs(T0, T1) -> (T1 - T0) / 1.0e9.

report(Bench, N, Secs, Rate, Unit, Extra) ->
    Sched = erlang:system_info(schedulers_online),
    Tail = [[" ", K, "=", V] || {K, V} <- Extra],
    io:format("RESULT sys=beam bench=~s n=~b time_s=~.6f rate=~.1f unit=~s sched=~b~s~n",
              [Bench, N, Secs, Rate, Unit, Sched, lists:flatten(Tail)]).

%% VmRSS of the emulator in KiB, or -1.
rss_kb() ->
    case file:read_file("/proc/self/status") of
        {ok, Bin} ->
            case re:run(Bin, "VmRSS:\\s+([0-9]+)", [{capture, [1], list}]) of
                {match, [Kb]} -> list_to_integer(Kb);
                nomatch -> -1
            end;
        _ ->
            -1
    end.

i2l(I) -> integer_to_list(I).
f2l(F, Digits) -> float_to_list(F, [{decimals, Digits}]).

%% Receive N messages equal to Want, or report how many came.
collect(0, _Want) ->
    ok;
collect(K, Want) ->
    receive
        Want -> collect(K - 1, Want)
    after ?RECV_TIMEOUT_MS ->
        {missing, K}
    end.

%% ---- noop -------------------------------------------------------------

%% Start-up cost: emulator start to the driver running, and the resident size
%% of an idle emulator.
bench(noop, N) ->
    {Ms, _} = statistics(wall_clock),
    Secs = Ms / 1000,
    report(noop, N, Secs, rate(1, Secs), "starts/s", [{"rss_kb", i2l(rss_kb())}]),
    0;

%% ---- spawn ------------------------------------------------------------

%% The driver's list of pids (a cons cell per process) is part of
%% rss_peak_kb here; the C driver preallocates its pid table instead.
bench(spawn, N) ->
    Self = self(),
    Before = rss_kb(),
    T0 = now_ns(),
    Pids = spawn_waiters(N, Self, []),
    T1 = now_ns(),
    Peak = rss_kb(),
    lists:foreach(fun(P) -> P ! go end, Pids),
    case collect(N, done) of
        ok ->
            T2 = now_ns(),
            Secs = secs(T0, T2),
            report(spawn, N, Secs, N / Secs, "actors/s",
                   [{"spawn_s", f2l(secs(T0, T1), 6)},
                    {"rss_before_kb", i2l(Before)},
                    {"rss_peak_kb", i2l(Peak)},
                    {"bytes_per_actor", i2l(round((Peak - Before) * 1024 / N))}]),
            0;
        {missing, K} ->
            err("spawn: missing ~b of ~b replies", [K, N]),
            1
    end;

%% ---- pingpong ---------------------------------------------------------

bench(pingpong, N) ->
    Self = self(),
    Echo = spawn(fun() -> echo(Self) end),
    T0 = now_ns(),
    case pingpong(N, Echo) of
        ok ->
            Secs = secs(T0, now_ns()),
            Echo ! stop,
            report(pingpong, N, Secs, 2 * N / Secs, "msgs/s", []),
            0;
        {missing, K} ->
            err("pingpong: no reply with ~b round trips to go", [K]),
            1
    end;

%% ---- call -------------------------------------------------------------

%% gen_server:call round trips (monitor, request, reply, demonitor), the
%% work of dx_call.
bench(call, N) ->
    {ok, Server} = gen_server:start(?MODULE, pong, []),
    T0 = now_ns(),
    ok = calls(N, Server),
    Secs = secs(T0, now_ns()),
    gen_server:stop(Server),
    report(call, N, Secs, N / Secs, "calls/s", []),
    0;

%% ---- ring -------------------------------------------------------------

%% Setup (spawning and wiring the ring) is timed apart; the rate counts hops.
bench(ring, N) ->
    Self = self(),
    T0 = now_ns(),
    Pids = [spawn(fun() -> ring_wait(Self) end) || _ <- lists:seq(1, ?RING_SIZE)],
    [First | _] = Pids,
    lists:foreach(fun({P, Next}) -> P ! {next, Next} end,
                  lists:zip(Pids, tl(Pids) ++ [First])),
    T1 = now_ns(),
    First ! N,
    Result = collect(1, done),
    T2 = now_ns(),
    lists:foreach(fun(P) -> P ! stop end, Pids),
    case Result of
        ok ->
            Secs = secs(T1, T2),
            report(ring, N, Secs, N / Secs, "hops/s",
                   [{"ring_size", i2l(?RING_SIZE)},
                    {"setup_s", f2l(secs(T0, T1), 6)}]),
            0;
        {missing, _} ->
            err("ring: the token never came back", []),
            1
    end;

%% ---- skynet -----------------------------------------------------------

bench(skynet, N) ->
    Self = self(),
    T0 = now_ns(),
    spawn(fun() -> skynet(Self, 0, N) end),
    receive
        Sum when is_integer(Sum) ->
            Secs = secs(T0, now_ns()),
            Want = N * (N - 1) div 2,
            Ok = Sum =:= Want,
            report(skynet, N, Secs, N / Secs, "leaves/s",
                   [{"sum", i2l(Sum)}, {"ok", atom_to_list(Ok)}]),
            case Ok of
                true -> 0;
                false -> err("skynet: sum ~b, expected ~b", [Sum, Want]), 1
            end
    after ?RECV_TIMEOUT_MS ->
        err("skynet: no sum", []),
        1
    end;

%% ---- fanout -----------------------------------------------------------

bench(fanout, N) ->
    Self = self(),
    T0 = now_ns(),
    Workers = list_to_tuple([spawn(fun() -> worker(Self) end)
                             || _ <- lists:seq(1, ?FANOUT_WORKERS)]),
    fan(0, N, Workers),
    Result = collect(N, ack),
    T1 = now_ns(),
    lists:foreach(fun(W) -> W ! stop end, tuple_to_list(Workers)),
    case Result of
        ok ->
            Secs = secs(T0, T1),
            report(fanout, N, Secs, N / Secs, "msgs/s",
                   [{"workers", i2l(?FANOUT_WORKERS)}]),
            0;
        {missing, K} ->
            err("fanout: missing ~b of ~b acks", [K, N]),
            1
    end;

%% ---- restart ----------------------------------------------------------

%% One restart = kill the supervised gen_server with `kill`, until its
%% replacement has run init/1 (which tells the driver), is registered under
%% its name and has answered a call, as in bench/bench_restart.c. OTP's
%% supervisor keeps every restart inside its period in a list it walks on
%% each restart, so one supervisor taking 10,000 restarts within a second
%% would measure that list, not restarting. A fresh supervisor (intensity
%% 100, period 1 s) therefore takes each batch of 100 restarts; replacing it
%% is not timed.
bench(restart, N) ->
    process_flag(trap_exit, true),
    T0 = now_ns(),
    Lats = restart_batches(N, []),
    Secs = secs(T0, now_ns()),
    case Lats of
        {missing, Done} ->
            err("restart: no restarted child after ~b restarts", [Done]),
            1;
        _ ->
            Sorted = lists:sort(Lats),
            report(restart, N, Secs, N / Secs, "restarts/s",
                   [{"p50_us", f2l(pct(Sorted, N, 50) / 1000, 1)},
                    {"p99_us", f2l(pct(Sorted, N, 99) / 1000, 1)}]),
            0
    end.

rate(_, Secs) when Secs =< 0 -> 0.0;
rate(N, Secs) -> N / Secs.

%% Nearest-rank percentile of a sorted list of N samples.
pct(Sorted, N, P) ->
    lists:nth(max(1, (P * N + 99) div 100), Sorted).

%% ---- processes --------------------------------------------------------

spawn_waiters(0, _Parent, Acc) ->
    Acc;
spawn_waiters(K, Parent, Acc) ->
    P = spawn(fun() -> receive go -> Parent ! done end end),
    spawn_waiters(K - 1, Parent, [P | Acc]).

echo(Parent) ->
    receive
        ping -> Parent ! pong, echo(Parent);
        stop -> ok
    end.

calls(0, _Server) ->
    ok;
calls(K, Server) ->
    pong = gen_server:call(Server, ping, ?RECV_TIMEOUT_MS),
    calls(K - 1, Server).

pingpong(0, _Echo) ->
    ok;
pingpong(K, Echo) ->
    Echo ! ping,
    receive
        pong -> pingpong(K - 1, Echo)
    after ?RECV_TIMEOUT_MS ->
        {missing, K}
    end.

ring_wait(Driver) ->
    receive
        {next, Next} -> ring_node(Next, Driver)
    end.

ring_node(Next, Driver) ->
    receive
        0 -> Driver ! done, ring_node(Next, Driver);
        C when is_integer(C) -> Next ! C - 1, ring_node(Next, Driver);
        stop -> ok
    end.

%% A leaf sends its number; an inner node splits its leaves over at most
%% ?SKYNET_FANOUT children and sends up the sum of their answers.
skynet(Parent, Num, 1) ->
    Parent ! Num;
skynet(Parent, Num, Size) ->
    K = min(?SKYNET_FANOUT, Size),
    Self = self(),
    sky_spawn(0, K, Size div K, Size rem K, Num, Self),
    Parent ! sky_sum(K, 0).

sky_spawn(K, K, _Base, _Rem, _Num, _Self) ->
    ok;
sky_spawn(I, K, Base, Rem, Num, Self) ->
    Size = case I < Rem of true -> Base + 1; false -> Base end,
    spawn(fun() -> skynet(Self, Num, Size) end),
    sky_spawn(I + 1, K, Base, Rem, Num + Size, Self).

sky_sum(0, Acc) ->
    Acc;
sky_sum(K, Acc) ->
    receive
        V -> sky_sum(K - 1, Acc + V)
    end.

fan(N, N, _Workers) ->
    ok;
fan(I, N, Workers) ->
    element(I rem ?FANOUT_WORKERS + 1, Workers) ! work,
    fan(I + 1, N, Workers).

worker(Driver) ->
    receive
        work -> Driver ! ack, worker(Driver);
        stop -> ok
    end.

%% ---- restart ----------------------------------------------------------

restart_batches(Left, Acc) when Left =< 0 ->
    Acc;
restart_batches(Left, Acc) ->
    Batch = min(Left, ?RESTART_BATCH),
    {ok, Sup} = supervisor:start_link(?MODULE, {sup, self()}),
    Result = receive
                 {started, Child} -> restart_loop(Batch, Child, Acc)
             after ?RECV_TIMEOUT_MS ->
                 {missing, 0}
             end,
    stop_sup(Sup),
    case Result of
        {missing, _} -> {missing, length(Acc)};
        Lats -> restart_batches(Left - Batch, Lats)
    end.

restart_loop(0, _Child, Acc) ->
    Acc;
restart_loop(K, Child, Acc) ->
    T0 = now_ns(),
    exit(Child, kill),
    receive
        {started, New} ->
            New = whereis(?WORKER_NAME),
            pong = gen_server:call(New, ping, ?RECV_TIMEOUT_MS),
            restart_loop(K - 1, New, [now_ns() - T0 | Acc])
    after ?RECV_TIMEOUT_MS ->
        {missing, K}
    end.

stop_sup(Sup) ->
    Ref = monitor(process, Sup),
    unlink(Sup),
    exit(Sup, shutdown),
    receive
        {'DOWN', Ref, process, Sup, _} -> flush_started()
    end.

flush_started() ->
    receive
        {started, _} -> flush_started();
        {'EXIT', _, _} -> flush_started()
    after 0 ->
        ok
    end.

%% supervisor callback (the argument tells it from the gen_server init/1).
init({sup, Driver}) ->
    Flags = #{strategy => one_for_one, intensity => ?RESTART_BATCH, period => 1},
    Child = #{id => child,
              start => {?MODULE, start_child, [Driver]},
              restart => permanent,
              shutdown => brutal_kill,
              type => worker},
    {ok, {Flags, [Child]}};
%% gen_server callback of the call benchmark's server.
init(pong) ->
    {ok, none};
%% gen_server callback of the supervised child.
init({child, Driver}) ->
    Driver ! {started, self()},
    {ok, Driver}.

start_child(Driver) ->
    gen_server:start_link({local, ?WORKER_NAME}, ?MODULE, {child, Driver}, []).

handle_call(ping, _From, S) -> {reply, pong, S}.
handle_cast(_Msg, S) -> {noreply, S}.
handle_info(_Msg, S) -> {noreply, S}.
