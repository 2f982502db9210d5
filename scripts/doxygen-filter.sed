# doxygen-filter.sed — read by Doxygen (Doxyfile's INPUT_FILTER) as it
# parses a public header: dspex documents its API in plain C comments, which
# Doxygen ignores, so this turns them into Doxygen comments on the fly.
# A header's opening comment ("/*" alone on the first line) is the file's
# description.
1s|^/\*$|/** @file|
# A comment above a declaration documents it.
s|^\([[:space:]]*\)/\* |\1/** |
# A comment after a member or an enumerator documents that member.
s|\([;,]\)\([[:space:]]*\)/\* |\1\2/**< |
