#!/usr/bin/env python3
"""Generated data for the demo: IFTTT's product database and one day of its events.

    python3 scripts/demo/generate.py product            > product.sql   # MariaDB: users, channels, recipes
    python3 scripts/demo/generate.py warehouse-ddl      > ddl.sql       # PostgreSQL: the analytics tables
    python3 scripts/demo/generate.py events --day DAY   > events.sql    # PostgreSQL: app_events, api_requests

Everything comes from one seeded random generator (stdlib only), so every run prints the same bytes: the
events refer to the same users, channels and recipes that `product` writes to MariaDB. Scripts are
idempotent (DROP and CREATE).

The product database: ~60 channels named after real services (each with the triggers and actions it
offers and how popular it is in either role), 3,000 users (some display names with emoji, accents and
non-Latin scripts, to test byte fidelity later: utf8mb4 throughout), 5,000 recipes ("applets") linking a
trigger channel to an action channel, owned by a user. Every table has `created_at` and `updated_at`.

The events of one day (UTC):
- app_events: sessions of active users on ios/android/web, following each user's local evening peak;
  some properties hold e-mail addresses (what scrub_emails.lua removes on the real path).
- api_requests: each recipe run polls its trigger channel and, when the trigger fired, calls the action
  channel. Latencies are log-normal per channel; a few channels have incidents in some hours (elevated
  5xx or timeouts, status 0), which is what the channel_alarms rollup should find.
"""

import argparse
import datetime as dt
import itertools
import json
import math
import random
import sys
import uuid

SEED = 20260301
N_USERS = 3000
N_RECIPES = 5000
EPOCH = dt.datetime(2019, 1, 1)
SNAPSHOT = dt.datetime(2026, 3, 1)  # product data is as of the demo day (some rows updated that day)

# name, slug, category, trigger weight, action weight, triggers, actions
CHANNELS = [
    ("Weather Underground", "weather", "weather", 30, 0, ["tomorrows_forecast", "current_condition_changes_to", "sunrise"], []),
    ("Gmail", "gmail", "email", 14, 14, ["any_new_email", "new_email_from", "new_attachment"], ["send_an_email", "send_yourself_an_email"]),
    ("Philips Hue", "hue", "smart_home", 3, 26, ["light_turned_on"], ["turn_on_lights", "blink_lights", "change_color"]),
    ("Slack", "slack", "communication", 4, 14, ["new_message_in_channel"], ["post_to_channel", "set_status"]),
    ("Twitter", "twitter", "social", 10, 10, ["new_tweet_by_you", "new_mention_of_you", "new_tweet_from_search"], ["post_a_tweet", "update_bio"]),
    ("Instagram", "instagram", "social", 18, 0, ["any_new_photo_by_you", "new_photo_by_you_with_hashtag"], []),
    ("Facebook", "facebook", "social", 6, 6, ["new_status_message_by_you", "new_photo_post_by_you"], ["create_a_status_message", "upload_a_photo"]),
    ("Dropbox", "dropbox", "cloud_storage", 4, 14, ["new_file_in_folder"], ["add_file_from_url", "append_to_text_file"]),
    ("Google Drive", "google_drive", "cloud_storage", 3, 12, ["new_file_in_folder"], ["upload_file_from_url", "append_to_document"]),
    ("Google Sheets", "google_sheets", "productivity", 2, 16, ["new_row_added"], ["add_row_to_spreadsheet", "update_cell"]),
    ("Google Calendar", "google_calendar", "productivity", 7, 6, ["event_from_search_starts", "new_event_added"], ["quick_add_event"]),
    ("Evernote", "evernote", "productivity", 2, 8, ["new_note_in_notebook"], ["append_to_note", "create_a_note"]),
    ("Spotify", "spotify", "music", 8, 2, ["new_saved_track", "new_track_added_to_playlist"], ["save_track"]),
    ("SoundCloud", "soundcloud", "music", 2, 1, ["new_like"], ["follow_user"]),
    ("YouTube", "youtube", "video", 6, 0, ["new_liked_video", "new_public_video_from_subscriptions"], []),
    ("RSS Feed", "feed", "news", 12, 0, ["new_feed_item", "new_feed_item_matches"], []),
    ("Email", "email", "email", 3, 12, ["send_ifttt_an_email"], ["send_me_an_email"]),
    ("SMS", "sms", "communication", 2, 8, ["send_ifttt_an_sms"], ["send_me_an_sms"]),
    ("Phone Call", "phone_call", "communication", 1, 3, ["call_ifttt"], ["call_my_phone"]),
    ("Notifications", "if_notifications", "ifttt", 0, 28, [], ["send_a_notification", "send_a_rich_notification"]),
    ("Location", "location", "device", 16, 0, ["you_enter_an_area", "you_exit_an_area"], []),
    ("Date & Time", "date_and_time", "ifttt", 14, 0, ["every_day_at", "every_hour_at", "every_day_of_the_week_at"], []),
    ("Button Widget", "do_button", "ifttt", 8, 0, ["button_press"], []),
    ("Fitbit", "fitbit", "health", 7, 0, ["daily_activity_summary", "new_sleep_logged", "daily_goal_achieved"], []),
    ("Withings", "withings", "health", 2, 0, ["new_weight_measurement"], []),
    ("Nest Thermostat", "nest_thermostat", "smart_home", 3, 6, ["temperature_rises_above", "nest_set_to_away"], ["set_temperature", "set_to_away"]),
    ("Nest Protect", "nest_protect", "smart_home", 2, 0, ["smoke_alarm_emergency", "battery_low"], []),
    ("SmartThings", "smartthings", "smart_home", 4, 6, ["switched_on", "motion_detected", "door_opened"], ["switch_on", "lock"]),
    ("WeMo Smart Plug", "wemo_switch", "smart_home", 2, 5, ["switched_on"], ["turn_on", "turn_off"]),
    ("LIFX", "lifx", "smart_home", 1, 7, ["light_turned_on"], ["turn_lights_on", "breathe_lights"]),
    ("Ring", "ring", "smart_home", 5, 0, ["new_ring_detected", "new_motion_detected"], []),
    ("Amazon Alexa", "amazon_alexa", "voice", 10, 0, ["say_a_specific_phrase", "item_added_to_shopping_list"], []),
    ("Google Assistant", "google_assistant", "voice", 11, 0, ["say_a_simple_phrase", "say_a_phrase_with_a_number"], []),
    ("Telegram", "telegram", "communication", 2, 5, ["new_message_with_key_phrase"], ["send_message"]),
    ("Discord", "discord", "communication", 1, 4, ["new_message_in_channel"], ["post_a_message"]),
    ("Trello", "trello", "productivity", 2, 4, ["card_added_to_board"], ["create_a_card"]),
    ("Todoist", "todoist", "productivity", 2, 5, ["new_completed_task"], ["create_task"]),
    ("Asana", "asana", "productivity", 1, 3, ["new_task_assigned_to_you"], ["create_task"]),
    ("Pocket", "pocket", "news", 3, 4, ["new_item_saved"], ["save_for_later"]),
    ("Reddit", "reddit", "social", 4, 1, ["new_hot_post_in_subreddit", "new_post_from_search"], ["submit_a_link"]),
    ("Tumblr", "tumblr", "social", 1, 2, ["new_post_by_you"], ["create_a_photo_post"]),
    ("WordPress", "wordpress", "blogging", 2, 2, ["any_new_post"], ["create_a_post"]),
    ("Medium", "medium", "blogging", 1, 1, ["new_post_by_you"], ["publish_a_post"]),
    ("LinkedIn", "linkedin", "social", 1, 3, ["new_post_by_you"], ["share_a_link"]),
    ("Pinterest", "pinterest", "social", 2, 2, ["new_pin_on_board"], ["add_pin_to_board"]),
    ("Flickr", "flickr", "photo", 1, 2, ["new_public_photo"], ["upload_public_photo"]),
    ("GitHub", "github", "developer", 3, 1, ["new_issue_assigned_to_you", "new_release_for_repository"], ["create_an_issue"]),
    ("OneDrive", "onedrive", "cloud_storage", 1, 4, ["new_file_in_folder"], ["upload_file_from_url"]),
    ("Office 365 Mail", "office_365_mail", "email", 2, 2, ["new_email_from"], ["send_an_email"]),
    ("Strava", "strava", "health", 4, 0, ["new_activity_by_you"], []),
    ("Swarm", "foursquare", "location", 2, 0, ["any_new_check_in"], []),
    ("Feedly", "feedly", "news", 2, 0, ["new_article_saved_for_later"], []),
    ("Pushbullet", "pushbullet", "communication", 1, 3, ["new_push_sent_to_you"], ["push_a_note"]),
    ("Webhooks", "maker_webhooks", "developer", 6, 6, ["receive_a_web_request"], ["make_a_web_request"]),
    ("Android Battery", "android_battery", "device", 3, 0, ["battery_low", "device_plugged_in"], []),
    ("Android Device", "android_device", "device", 3, 3, ["connects_to_wifi"], ["set_ringtone_volume", "mute_ringtone"]),
    ("iOS Photos", "ios_photos", "photo", 5, 1, ["new_photo_taken", "new_screenshot"], ["add_photo_to_album"]),
    ("iOS Reminders", "ios_reminders", "productivity", 2, 3, ["reminder_completed"], ["add_reminder"]),
    ("Netatmo Weather Station", "netatmo", "weather", 2, 0, ["temperature_rises_above", "co2_rises_above"], []),
    ("ecobee", "ecobee", "smart_home", 1, 2, ["temperature_drops_below"], ["set_temperature"]),
    ("iRobot Roomba", "roomba", "smart_home", 1, 3, ["cleaning_complete"], ["start_cleaning"]),
    ("Airtable", "airtable", "productivity", 1, 2, ["new_record"], ["create_record"]),
]

# Channels with an incident on the demo day: (slug, first hour, last hour UTC, status, error rate, latency factor).
# Status 0 is a timeout (the worker gave up after 30 s).
INCIDENTS = [
    ("hue", 14, 16, 503, 0.40, 3.0),
    ("dropbox", 9, 9, 502, 0.30, 1.5),
    ("fitbit", 19, 20, 0, 0.35, 1.0),
]

FIRST = ["Emma", "Liam", "Olivia", "Noah", "Ava", "Mateo", "Sofia", "Lucas", "Mia", "Ethan", "Chloé", "Zoë",
         "José", "Łukasz", "Björn", "Søren", "Ines", "Aarav", "Priya", "Wei", "Yuki", "Hana", "Kenji", "Min-jun",
         "Ji-woo", "Olusegun", "Amara", "Kwame", "Fatima", "Omar", "Leila", "Dmitri", "Ана", "Ελένη", "Nikos",
         "Sven", "Maëlle", "François", "Jürgen", "Anaïs", "Renée", "Diego", "Camila", "Valentina", "Thiago",
         "Sam", "Alex", "Jordan", "Taylor", "Riley", "Chris", "Pat", "Dana", "Robin", "Kai", "渡辺", "陈静"]
LAST = ["Smith", "Johnson", "Garcia", "Müller", "Rossi", "Dubois", "Kowalski", "Nguyen", "Kim", "Tanaka",
        "Chen", "Singh", "Okafor", "Silva", "Hernández", "O'Brien", "Andersen", "Novak", "Ivanova", "Papadopoulos",
        "Schmidt", "Lefèvre", "Sato", "Park", "Khan", "Costa", "Jansen", "Larsen", "Moreau", "Brown"]
EMOJI = ["🌵", "🍣", "🦄", "🚀", "🎧", "🌈", "🐙", "☕", "🔥", "🌻", "🐈", "🏄", "👩‍💻", "🇯🇵", "🇧🇷", "🤖", "💡", "🎮"]
# country, weight, UTC offset (hours): users' local evening peak lands at different UTC hours.
COUNTRIES = [("US", 38, -6), ("CA", 5, -5), ("BR", 6, -3), ("GB", 8, 0), ("DE", 7, 1), ("FR", 5, 1),
             ("ES", 3, 1), ("IT", 3, 1), ("NL", 2, 1), ("SE", 2, 1), ("PL", 2, 1), ("IN", 6, 5.5),
             ("JP", 6, 9), ("KR", 2, 9), ("AU", 3, 10), (None, 2, 0)]
MAIL_DOMAINS = ["gmail.com", "yahoo.com", "outlook.com", "icloud.com", "hotmail.com", "proton.me", "gmx.de"]
PLANS = [("free", 82), ("pro", 15), ("pro_plus", 3)]
RECIPE_EMOJI = ["💡", "🌧️", "📸", "🏃", "🔔", "🎵", "📬", "🏠", "🚗", "☔", "🌙", "📈"]


def weighted(rng, items, weights):
    return rng.choices(items, weights=weights, k=1)[0]


class Picker:
    """Weighted choice with the cumulative weights computed once."""

    def __init__(self, items, weights):
        self.items, self.cum = items, list(itertools.accumulate(weights))

    def __call__(self, rng):
        return rng.choices(self.items, cum_weights=self.cum, k=1)[0]


def ts(t):
    return t.strftime("%Y-%m-%d %H:%M:%S")


def rand_time(rng, a, b):
    return a + dt.timedelta(seconds=rng.randrange(int((b - a).total_seconds())))


def humanize(slug):
    return slug.replace("_", " ")


def ascii_handle(s):
    table = str.maketrans("éèëïöüäåøłçãáíóúñôÉŁÖ", "eeeiouaaolcaaiounoELO")
    out = "".join(c for c in s.translate(table).lower() if c.isascii() and c.isalnum())
    return out or "user"


class Product:
    """The product database, generated from the seed."""

    def __init__(self):
        rng = random.Random(SEED)
        self.channels = []
        for i, (name, slug, cat, tw, aw, triggers, actions) in enumerate(CHANNELS, start=1):
            created = EPOCH + dt.timedelta(days=i * 11)
            updated = rand_time(rng, created, SNAPSHOT)
            self.channels.append(dict(id=i, slug=slug, name=name, category=cat, tw=tw, aw=aw,
                                      triggers=triggers, actions=actions, created_at=created,
                                      updated_at=updated,
                                      median_ms=round(math.exp(rng.uniform(math.log(60), math.log(700))))))
        self.by_slug = {c["slug"]: c for c in self.channels}

        self.users = []
        handles = set()
        for uid in range(1, N_USERS + 1):
            first, last = rng.choice(FIRST), rng.choice(LAST)
            handle = ascii_handle(first) + "." + ascii_handle(last)
            while handle in handles:
                handle = ascii_handle(first) + "." + ascii_handle(last) + str(rng.randrange(10, 9999))
            handles.add(handle)
            r = rng.random()
            if r < 0.08:
                display = f"{first} {rng.choice(EMOJI)}"
            elif r < 0.11:
                display = f"{rng.choice(EMOJI)} {first} {last}"
            elif r < 0.16:
                display = None
            else:
                display = f"{first} {last}"
            country, _, offset = weighted(rng, COUNTRIES, [c[1] for c in COUNTRIES])
            created = rand_time(rng, EPOCH, SNAPSHOT - dt.timedelta(days=2))
            # Most rows were touched some time ago; a few on the demo day itself.
            if rng.random() < 0.03:
                updated = rand_time(rng, SNAPSHOT, SNAPSHOT + dt.timedelta(days=1))
            else:
                updated = rand_time(rng, created, SNAPSHOT)
            self.users.append(dict(
                id=uid, username=handle, email=f"{handle}@{rng.choice(MAIL_DOMAINS)}", display_name=display,
                country=country, offset=offset if country else rng.choice([-5, 0, 1, 9]),
                plan=weighted(rng, [p[0] for p in PLANS], [p[1] for p in PLANS]),
                created_at=created, updated_at=updated,
                activity=rng.paretovariate(1.3),  # heavy-tailed engagement
                platform=weighted(rng, ["ios", "android", "web"], [45, 38, 17])))

        owner = Picker(self.users, [min(u["activity"], 40.0) for u in self.users])  # power users: many recipes
        trigger = Picker(*zip(*[(c, c["tw"]) for c in self.channels if c["triggers"]]))
        action = Picker(*zip(*[(c, c["aw"]) for c in self.channels if c["actions"]]))
        self.recipes = []
        for rid in range(1, N_RECIPES + 1):
            user = owner(rng)
            t, a = trigger(rng), action(rng)
            while a is t:
                a = action(rng)
            trig, act = rng.choice(t["triggers"]), rng.choice(a["actions"])
            name = f"{t['name']}: {humanize(trig)} → {a['name']}: {humanize(act)}"
            if rng.random() < 0.12:
                name = f"{rng.choice(RECIPE_EMOJI)} {name}"
            created = rand_time(rng, max(user["created_at"], t["created_at"], a["created_at"]),
                                SNAPSHOT - dt.timedelta(days=1))
            if rng.random() < 0.04:
                updated = rand_time(rng, SNAPSHOT, SNAPSHOT + dt.timedelta(days=1))
            else:
                updated = rand_time(rng, created, SNAPSHOT)
            self.recipes.append(dict(
                id=rid, user_id=user["id"], name=name, trigger_channel_id=t["id"], trigger=trig,
                action_channel_id=a["id"], action=act, enabled=rng.random() < 0.82,
                success_rate=round(rng.betavariate(30, 1.2), 6), created_at=created, updated_at=updated,
                runs_per_day=rng.lognormvariate(1.0, 1.2)))


# --------------------------------------------------------------------------------------------- MariaDB

def my_str(v):
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, dt.datetime):
        v = ts(v)
    return "'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'"


def inserts(out, table, cols, rows, batch=500):
    for i in range(0, len(rows), batch):
        out.write(f"INSERT INTO {table} ({', '.join(cols)}) VALUES\n")
        out.write(",\n".join("(" + ", ".join(my_str(r[c]) for c in cols) + ")" for r in rows[i:i + batch]))
        out.write(";\n")


def product_sql(out):
    p = Product()
    out.write("""-- The production database of the demo (generated by scripts/demo/generate.py product).
SET NAMES utf8mb4;
DROP TABLE IF EXISTS recipes;
DROP TABLE IF EXISTS users;
DROP TABLE IF EXISTS channels;
CREATE TABLE channels (
  id          INT          NOT NULL PRIMARY KEY,
  slug        VARCHAR(64)  NOT NULL UNIQUE,
  name        VARCHAR(128) NOT NULL,
  category    VARCHAR(32)  NOT NULL,
  created_at  DATETIME     NOT NULL,
  updated_at  DATETIME     NOT NULL,
  KEY channels_updated_at (updated_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
CREATE TABLE users (
  id            BIGINT       NOT NULL PRIMARY KEY,
  username      VARCHAR(64)  NOT NULL UNIQUE,
  email         VARCHAR(255) NOT NULL,
  display_name  VARCHAR(128) NULL,
  country       CHAR(2)      NULL,
  plan          VARCHAR(16)  NOT NULL,
  created_at    DATETIME     NOT NULL,
  updated_at    DATETIME     NOT NULL,
  KEY users_updated_at (updated_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
CREATE TABLE recipes (
  id                  BIGINT       NOT NULL PRIMARY KEY,
  user_id             BIGINT       NOT NULL,
  name                VARCHAR(255) NOT NULL,
  trigger_channel_id  INT          NOT NULL,
  trigger_slug        VARCHAR(64)  NOT NULL,
  action_channel_id   INT          NOT NULL,
  action_slug         VARCHAR(64)  NOT NULL,
  enabled             BOOLEAN      NOT NULL,
  success_rate        DOUBLE       NOT NULL,
  created_at          DATETIME     NOT NULL,
  updated_at          DATETIME     NOT NULL,
  KEY recipes_user (user_id),
  KEY recipes_updated_at (updated_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
""")
    inserts(out, "channels", ["id", "slug", "name", "category", "created_at", "updated_at"], p.channels)
    inserts(out, "users", ["id", "username", "email", "display_name", "country", "plan", "created_at",
                           "updated_at"], p.users)
    rows = [dict(r, trigger_slug=r["trigger"], action_slug=r["action"]) for r in p.recipes]
    inserts(out, "recipes", ["id", "user_id", "name", "trigger_channel_id", "trigger_slug", "action_channel_id",
                             "action_slug", "enabled", "success_rate", "created_at", "updated_at"], rows)


# ------------------------------------------------------------------------------------------ PostgreSQL

WAREHOUSE_DDL = """-- The warehouse tables the rollups read (generated by scripts/demo/generate.py warehouse-ddl).
-- Stand-in for product_daily and events_daily loads, which arrive with the load issue.
SET client_min_messages = warning;
DROP SCHEMA IF EXISTS analytics CASCADE;
-- The loads' exactly-once record goes with the tables it describes (else a rerun skips every object).
DO $$ BEGIN
  IF to_regclass('public.cranium_loaded_objects') IS NOT NULL THEN
    DELETE FROM public.cranium_loaded_objects WHERE target LIKE 'analytics.%';
  END IF;
END $$;
CREATE SCHEMA analytics;
CREATE TABLE analytics.channels (
  id          bigint       PRIMARY KEY,
  slug        varchar(64)  NOT NULL,
  name        varchar(128) NOT NULL,
  category    varchar(32)  NOT NULL,
  created_at  timestamptz  NOT NULL,
  updated_at  timestamptz  NOT NULL
);
CREATE TABLE analytics.users (
  id            bigint       PRIMARY KEY,
  username      varchar(64)  NOT NULL,
  email         varchar(255) NOT NULL,
  display_name  varchar(128),
  country       char(2),
  plan          varchar(16)  NOT NULL,
  created_at    timestamptz  NOT NULL,
  updated_at    timestamptz  NOT NULL
);
CREATE TABLE analytics.recipes (
  id                  bigint       PRIMARY KEY,
  user_id             bigint       NOT NULL,
  name                varchar(255) NOT NULL,
  trigger_channel_id  bigint       NOT NULL,
  trigger_slug        varchar(64)  NOT NULL,
  action_channel_id   bigint       NOT NULL,
  action_slug         varchar(64)  NOT NULL,
  enabled             boolean      NOT NULL,
  success_rate        double precision NOT NULL,
  created_at          timestamptz  NOT NULL,
  updated_at          timestamptz  NOT NULL
);
CREATE TABLE analytics.app_events (
  event_id    varchar(36)  NOT NULL,
  user_id     bigint       NOT NULL,
  event_type  varchar(64)  NOT NULL,
  platform    varchar(32)  NOT NULL,
  event_time  timestamptz  NOT NULL,
  properties  jsonb
);
CREATE TABLE analytics.api_requests (
  request_id   varchar(36)  NOT NULL,
  channel_id   bigint       NOT NULL,
  endpoint     varchar(255) NOT NULL,
  recipe_id    bigint,
  status_code  integer      NOT NULL,
  response_ms  integer      NOT NULL,
  request_time timestamptz  NOT NULL
);
"""


def copy_field(v):
    if v is None:
        return "\\N"
    if isinstance(v, dt.datetime):
        return v.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "+00"
    s = str(v)
    return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def copy_block(out, table, cols, rows):
    out.write(f"COPY {table} ({', '.join(cols)}) FROM stdin;\n")
    for r in rows:
        out.write("\t".join(copy_field(r[c]) for c in cols) + "\n")
    out.write("\\.\n")


def diurnal(local_hour):
    """Relative activity at a local hour: quiet at 4am, a bump at 8am, the peak around 8pm."""
    evening = ((local_hour - 20 + 12) % 24) - 12
    morning = ((local_hour - 8 + 12) % 24) - 12
    return 0.12 + math.exp(-evening * evening / 14.0) + 0.45 * math.exp(-morning * morning / 4.0)


HOUR_WEIGHTS_BY_OFFSET = {}


def utc_hour(rng, offset):
    """A UTC hour of the day for a user at this UTC offset, following their local day."""
    w = HOUR_WEIGHTS_BY_OFFSET.get(offset)
    if w is None:
        w = HOUR_WEIGHTS_BY_OFFSET[offset] = [diurnal((h + offset) % 24) for h in range(24)]
    return rng.choices(range(24), weights=w, k=1)[0]


def uid(rng):
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def generate_events(day):
    """One day of app events and partner API requests, each list sorted by time."""
    p = Product()
    rng = random.Random(SEED * 7 + day.toordinal())
    start = dt.datetime(day.year, day.month, day.day)
    end = start + dt.timedelta(days=1)

    # ---- app_events: sessions of active users
    by_user = {}
    for r in p.recipes:
        by_user.setdefault(r["user_id"], []).append(r)
    events = []
    for u in p.users:
        if u["created_at"] >= end or rng.random() > min(0.9, 0.3 * u["activity"]):
            continue
        sessions = 1 + min(int(rng.expovariate(1.0) * u["activity"]), 12)
        for _ in range(sessions):
            platform = u["platform"] if rng.random() < 0.85 else rng.choice(["ios", "android", "web"])
            t = start + dt.timedelta(hours=utc_hour(rng, u["offset"]), seconds=rng.randrange(3600))
            seq = [("app_open", {"source": rng.choice(["icon", "notification", "widget", "deep_link"])})]
            for _ in range(int(rng.expovariate(0.3))):
                kind = weighted(rng, ["applet_view", "search", "applet_enable", "applet_disable", "applet_create",
                                      "service_connect", "notification_open", "share", "settings_update"],
                                [40, 14, 10, 4, 3, 6, 12, 3, 2])
                mine = by_user.get(u["id"]) or [rng.choice(p.recipes)]
                if kind in ("applet_view", "applet_enable", "applet_disable"):
                    r = rng.choice(p.recipes) if kind == "applet_view" and rng.random() < 0.6 else rng.choice(mine)
                    props = {"applet_id": r["id"], "source": rng.choice(["discover", "my_applets", "search"])}
                elif kind == "applet_create":
                    props = {"trigger": rng.choice(p.channels)["slug"], "action": rng.choice(p.channels)["slug"]}
                elif kind == "search":
                    q = rng.choice(["hue", "weather", "instagram to dropbox", "alexa", "rain", "spotify",
                                    "☔ rain alert", "🏠 smart home", "slack", "sheets", "fitbit", "notify me"])
                    props = {"query": q, "results": rng.randrange(0, 40)}
                elif kind == "service_connect":
                    props = {"channel": rng.choice(p.channels)["slug"]}
                elif kind == "notification_open":
                    props = {"applet_id": rng.choice(mine)["id"]}
                elif kind == "share":
                    other = rng.choice(p.users)
                    props = {"method": "email", "to": other["email"], "applet_id": rng.choice(mine)["id"]}
                else:
                    props = {"field": "email", "old": u["email"],
                             "new": f"{u['username']}@{rng.choice(MAIL_DOMAINS)}"}
                seq.append((kind, props))
            for kind, props in seq:
                if t >= end:
                    break
                events.append(dict(event_id=uid(rng), user_id=u["id"], event_type=kind, platform=platform,
                                   event_time=t, properties=json.dumps(props, ensure_ascii=False)))
                t += dt.timedelta(seconds=rng.randrange(2, 90), milliseconds=rng.randrange(1000))
    events.sort(key=lambda e: e["event_time"])

    # ---- api_requests: recipe runs (trigger poll, then the action when the trigger fired)
    users = {u["id"]: u for u in p.users}
    chans = {c["id"]: c for c in p.channels}
    incidents = {}
    for slug, h0, h1, status, rate, slow in INCIDENTS:
        for h in range(h0, h1 + 1):
            incidents[(p.by_slug[slug]["id"], h)] = (status, rate, slow)
    requests = []

    def call(channel_id, endpoint, recipe_id, t):
        c = chans[channel_id]
        status_code, ms = 200, rng.lognormvariate(math.log(c["median_ms"]), 0.55)
        inc = incidents.get((channel_id, t.hour))
        x = rng.random()
        if inc and x < inc[1]:
            status_code = inc[0]
            ms = 30000 if status_code == 0 else ms * inc[2]
        else:
            if inc:
                ms *= inc[2]
            y = rng.random()
            if y < 0.0015:
                status_code = rng.choice([500, 502, 503, 504])
            elif y < 0.002:
                status_code, ms = 0, 30000
            elif y < 0.016:
                status_code = 401  # the user's token was revoked: an error of the user's, not the partner's
            elif y < 0.024:
                status_code = 429
            elif y < 0.028:
                status_code = 404
        requests.append(dict(request_id=uid(rng), channel_id=channel_id, endpoint=endpoint, recipe_id=recipe_id,
                             status_code=status_code, response_ms=max(3, int(ms)), request_time=t))
        return status_code

    for r in p.recipes:
        if not r["enabled"] or r["created_at"] >= start:
            continue
        runs = int(r["runs_per_day"]) + (1 if rng.random() < r["runs_per_day"] % 1 else 0)
        offset = users[r["user_id"]]["offset"]
        for _ in range(runs):
            t = start + dt.timedelta(hours=utc_hour(rng, offset), seconds=rng.randrange(3600),
                                     milliseconds=rng.randrange(1000))
            st = call(r["trigger_channel_id"], f"/ifttt/v1/triggers/{r['trigger']}", r["id"], t)
            if st == 200 and rng.random() < 0.7:
                t2 = t + dt.timedelta(milliseconds=rng.randrange(200, 8000))
                if t2 < end:
                    call(r["action_channel_id"], f"/ifttt/v1/actions/{r['action']}", r["id"], t2)
    # Endpoint health checks without a recipe (recipe_id NULL): the platform polls every channel hourly.
    for c in p.channels:
        for h in range(24):
            call(c["id"], "/ifttt/v1/status", None, start + dt.timedelta(hours=h, seconds=rng.randrange(60)))
    requests.sort(key=lambda e: e["request_time"])
    return events, requests


def events_sql(out, day):
    start = dt.datetime(day.year, day.month, day.day)
    end = start + dt.timedelta(days=1)
    events, requests = generate_events(day)
    out.write(f"-- One day ({day}) of app_events and api_requests (generated by scripts/demo/generate.py events).\n"
              "-- Stand-in for the events_daily loads, which arrive with the load issue.\n"
              "SET client_min_messages = warning;\nBEGIN;\n")
    out.write(f"DELETE FROM analytics.app_events WHERE event_time >= '{start}+00' AND event_time < '{end}+00';\n")
    out.write(f"DELETE FROM analytics.api_requests WHERE request_time >= '{start}+00' AND request_time < '{end}+00';\n")
    copy_block(out, "analytics.app_events", ["event_id", "user_id", "event_type", "platform", "event_time",
                                             "properties"], events)
    copy_block(out, "analytics.api_requests", ["request_id", "channel_id", "endpoint", "recipe_id", "status_code",
                                               "response_ms", "request_time"], requests)
    out.write("COMMIT;\nANALYZE analytics.app_events;\nANALYZE analytics.api_requests;\n")


def iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def events_jsonl(out, day, topic):
    """The day's records of a Kafka topic as JSON lines, in arrival order: mostly in time order, with
    about 1 in 200 arriving one to three hours late (a phone that was offline) and a handful of
    malformed records (truncated JSON, a record that is not JSON, bad UTF-8 is not representable in a
    text file and is covered by the tests) for the dead-letter prefix."""
    events, requests = generate_events(day)
    rng = random.Random(SEED * 11 + day.toordinal())
    if topic == "app_events":
        rows = [(e["event_time"], {"event_id": e["event_id"], "user_id": e["user_id"], "type": e["event_type"],
                                   "platform": e["platform"], "time": iso(e["event_time"]),
                                   "properties": json.loads(e["properties"])}) for e in events]
    else:
        rows = [(r["request_time"], {"request_id": r["request_id"], "channel_id": r["channel_id"],
                                     "endpoint": r["endpoint"], "recipe_id": r["recipe_id"],
                                     "status_code": r["status_code"], "response_ms": r["response_ms"],
                                     "time": iso(r["request_time"])}) for r in requests]
    arrivals = []
    for t, rec in rows:
        late = rng.random() < 0.005
        arrival = t + (dt.timedelta(minutes=rng.randrange(60, 180)) if late else dt.timedelta(0))
        arrivals.append((arrival, json.dumps(rec, ensure_ascii=False, separators=(",", ":"))))
    end = dt.datetime(day.year, day.month, day.day) + dt.timedelta(days=1)
    arrivals = [a for a in arrivals if a[0] < end]
    for i in range(5):
        at = dt.datetime(day.year, day.month, day.day, 3 + 4 * i, 17)
        bad = ['{"event_id": "truncated", "time": "' + iso(at), "not json at all",
               '{"time": "yesterday-ish", "user_id": 1}', "[1, 2, 3]", '{"no_time": true}'][i]
        arrivals.append((at, bad))
    arrivals.sort(key=lambda a: a[0])
    for _, line in arrivals:
        out.write(line + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["product", "warehouse-ddl", "events", "events-jsonl"])
    ap.add_argument("--day", default="2026-03-01", help="the day of events (UTC), YYYY-MM-DD")
    ap.add_argument("--topic", default="app_events", choices=["app_events", "api_requests"],
                    help="events-jsonl: which topic's records")
    a = ap.parse_args()
    out = sys.stdout
    if a.what == "product":
        product_sql(out)
    elif a.what == "warehouse-ddl":
        out.write(WAREHOUSE_DDL)
    elif a.what == "events-jsonl":
        events_jsonl(out, dt.date.fromisoformat(a.day), a.topic)
    else:
        events_sql(out, dt.date.fromisoformat(a.day))


if __name__ == "__main__":
    sys.stdout.reconfigure(encoding="utf-8", newline="\n")
    main()
