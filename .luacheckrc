std = "lua54"
max_line_length = 120
-- specs quote exact expected output, which makes long literal lines
files["spec"] = { std = "+busted", max_line_length = 160 }
