#!/usr/bin/env escript
%%! -name ask@127.0.0.1
%% ask.escript — asks the dspex qa_agent a question over Erlang distribution.
%% Usage: ./ask.escript 'qa@127.0.0.1' "What is the capital of France?"
%% (the cookie is ~/.erlang.cookie, the same one qa_agent reads).
main([Node, Question]) ->
    Reply = gen_server:call({qa_agent, list_to_atom(Node)},
                            {predict, #{<<"question">> => list_to_binary(Question)}},
                            30000),
    io:format("~p~n", [Reply]);
main(_) ->
    io:format("usage: ask.escript NODE QUESTION~n"),
    halt(2).
